"""Make a fine-tuned model smaller and faster: quantize, prune, distill, export to ONNX, measure,
and choose the fastest variant within an accuracy budget (see `tailorml.recipes.compress`)."""
