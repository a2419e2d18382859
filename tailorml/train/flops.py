"""Model FLOPs per token and model FLOPs utilisation (MFU) for the training loops.

Counted the way the PaLM paper's appendix counts them, so that figures compare with what other
trainers report:

    per token, forward + backward = 6 * (weights of every Linear layer)          # the matmuls
                                  + 12 * layers * hidden * block_size            # attention scores
                                                                                 # and the mix

Every `nn.Linear` (and GPT-2's `Conv1D`) counts, a tied language-model head too (it is a
matmul over the vocabulary even when it shares the embedding's weights); embedding lookups,
norms and activations do not.
The attention term counts the whole block (no causal halving), as is usual. Masked-LM
pretraining runs the head (BERT's `cls`: transform + vocabulary projection) on the masked rows
only, so there the head counts `mask_prob` of a token. Recomputation
(activation checkpointing) is not counted: that is *model* FLOPs, not hardware FLOPs.

MFU = (tokens/s of all processes) * FLOPs per token / (processes * peak FLOPs of one device).
The peak is dense bf16 from the vendor's data sheet, looked up by the CUDA device's name, or
given in the config (`pretrain.peak_tflops`, e.g. for a GPU not in the table or for a CPU).
"""

from __future__ import annotations

from typing import Any

# Dense (no sparsity) bf16 tensor-core peaks, TFLOPS, from the vendors' data sheets. The first
# matching substring of the device name wins, so the more specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("V100", 125.0),  # fp16: V100 has no bf16
)


def linear_weights(model: Any) -> int:
    """How many weights the model's matmul layers hold (`nn.Linear`, and transformers' `Conv1D`
    of the GPT-2 family), a shared (tied) weight once for each layer that uses it."""
    import torch

    return sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    )


def flops_per_token(model: Any, block_size: int, head_share: float = 1.0) -> float:
    """Training (forward + backward) model FLOPs per token of a transformers model.
    `head_share`: the share of tokens the language-model head runs on (masked-LM pretraining
    projects only the masked rows onto the vocabulary: `pretrain.mask_prob`); 1 = every token."""
    cfg = model.config
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    weights = float(linear_weights(model))
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    if head is not None and head_share != 1.0:
        weights -= (1.0 - head_share) * linear_weights(head)
    return 6.0 * weights + 12.0 * layers * hidden * block_size


def device_peak_flops(device: Any, configured_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOPs of one device, where the figure comes from); (None, why) when unknown."""
    if configured_tflops:
        return configured_tflops * 1e12, "pretrain.peak_tflops"
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None, "no peak for a CPU: set pretrain.peak_tflops to log MFU"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{name}: {tflops:g} dense bf16 TFLOPS (data sheet)"
    return None, f"{name}: not in the peak table; set pretrain.peak_tflops to log MFU"


def mfu(tokens_per_s: float, per_token: float, peak: float, processes: int = 1) -> float:
    """Share of the devices' peak that the model's FLOPs used, 0..1."""
    return tokens_per_s * per_token / (max(processes, 1) * peak)
