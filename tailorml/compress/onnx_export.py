"""Export a sequence classifier to ONNX (dynamic batch and sequence axes), apply ONNX Runtime's
transformer graph fusions, and quantize to int8 with ONNX Runtime.

Uses `torch.onnx.export` (TorchScript exporter) and `onnxruntime` directly: optimum pins an old
transformers (see DESIGN.md).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

from tailorml.errors import ConfigError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


def _eager_copy(model: Any) -> Any:
    """The same weights with eager attention: SDPA traces into a graph that ONNX Runtime's
    attention fusion does not recognise, and tracing SDPA with an unpadded example drops the
    padding mask. Eager attention exports a mask-aware graph that fuses into `Attention`."""
    import copy

    model = copy.deepcopy(model)
    model.config._attn_implementation = "eager"
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = "eager"
    return model


class _ByName:
    """Positional graph inputs -> keyword arguments (forward's positional order differs across
    architectures); returns the logits tensor only."""

    def __new__(cls, model: Any, names: list[str]) -> Any:
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any) -> Any:
                return self.model(**dict(zip(names, args, strict=True))).logits

        return Wrapper()


def export_onnx(model: Any, tokenizer: Any, path: Path) -> list[str]:
    """Write `path` (model.onnx). Returns the input names the graph takes."""
    import onnx
    import torch

    model = _eager_copy(model).eval()
    # A padded batch of two different lengths: the trace must carry the attention mask.
    sample = tokenizer(
        ["a short text", "a somewhat longer text with several more tokens in it"],
        padding=True,
        return_tensors="pt",
    )
    accepts = inspect.signature(model.forward).parameters
    names = [n for n in INPUTS if n in sample and n in accepts]
    args = tuple(sample[n] for n in names)
    wrapped = _ByName(model, names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            args,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:  # pragma: no cover - exporter bug
        raise ConfigError(f"The exported ONNX graph failed onnx.checker: {exc}") from None
    return names


def attention_shape(model: Any) -> tuple[int, int]:
    """(heads, heads * head_size) of every layer's attention, for ONNX Runtime's Attention fusion
    (which cannot read them from transformers 5 graphs: they reshape with -1 heads); (0, 0)
    when layers differ (then attention stays unfused, still correct)."""
    from tailorml.compress.prune import encoder_layers

    try:
        layers = encoder_layers(model)
    except ConfigError:
        return 0, 0
    head_size = model.config.hidden_size // model.config.num_attention_heads
    widths = {int(layer.attention.self.query.out_features) for layer in layers}
    if len(widths) != 1:
        return 0, 0
    width = widths.pop()
    return width // head_size, width


def optimize_onnx(
    src: Path, dst: Path, num_heads: int = 0, hidden_size: int = 0, model_type: str = "bert"
) -> dict[str, int]:
    """ONNX Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm)."""
    from onnxruntime.transformers.optimizer import optimize_model

    logging.disable(logging.WARNING)  # the fusion modules log every pattern they do not match
    try:
        opt = optimize_model(
            str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size
        )
        opt.save_model_to_file(str(dst))
        stats = opt.get_fused_operator_statistics()
    finally:
        logging.disable(logging.NOTSET)
    return {k: int(v) for k, v in stats.items() if v}


def quantize_onnx(src: Path, dst: Path) -> None:
    """Dynamic int8: int8 weights for MatMul/Attention/Gather (embeddings too), activations
    quantized at run time. `DefaultTensorType` is needed on graphs with fused contrib ops, whose
    output types the quantizer cannot infer (DESIGN.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": 1},
        )
    finally:
        logging.disable(logging.NOTSET)


# Static int8 quantizes the inputs of these operators only: the encoder's matrix products and
# the embedding lookups. Quantizing every operator (LayerNorm, Softmax, Add, ...) with ranges
# from calibration cost 60 points of accuracy on Banking77 (measured, docs/benchmarks-compress.md).
STATIC_OPS = ("MatMul", "Gather")


def quantize_onnx_static(src: Path, dst: Path, feeds: list[dict[str, Any]]) -> None:
    """Static int8 of an unfused export `src` into `dst`: int8 weights per output channel,
    uint8 activations whose ranges (min/max) come from running `feeds` (calibration batches of
    the graph's inputs) through the fp32 graph. QDQ format: ONNX Runtime's session turns each
    quantize/dequantize pair around a MatMul into an int8 kernel. ONNX Runtime's static
    quantizer cannot read the fused graph's contrib ops (their output types are unknown to it),
    so it runs on the export before fusion."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not feeds:
        raise ConfigError("Static int8 needs calibration texts; the training split has none.")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    pre = dst.with_name("pre.onnx")
    logging.disable(logging.WARNING)
    try:
        # shape inference and constant folding; the symbolic pass fails on the exported masks
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(STATIC_OPS),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        logging.disable(logging.NOTSET)
        pre.unlink(missing_ok=True)
