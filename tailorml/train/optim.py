"""AdamW with decoupled weight decay (not on biases and norms) and warmup + decay schedules."""

from __future__ import annotations

import math
from typing import Any

import torch

from tailorml.config.schema import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Biases and LayerNorm weights are 1-D; decaying them hurts and buys nothing.
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (0.9, 0.999), "eps": 1e-8}
    # The fused kernel runs on CUDA (and on CPU in recent torch); fall back to foreach elsewhere.
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    if cfg.warmup_ratio is not None:
        return int(cfg.warmup_ratio * total_steps)
    if cfg.schedule == "onecycle":
        return int(0.25 * total_steps)
    return int(0.06 * total_steps)  # a common default for encoder fine-tuning


class WarmupDecay:
    """lr multiplier: linear warmup to 1, then linear/cosine decay to 0 (or constant).

    A callable object (not a closure) so that LambdaLR can save and restore it.
    """

    def __init__(self, warmup: int, total: int, kind: str):
        self.warmup, self.total, self.kind = warmup, max(total, 1), kind

    def __call__(self, step: int) -> float:
        if self.kind == "onecycle":  # cosine from 1/25 up to 1, then cosine down to 0
            if step < self.warmup:
                up = step / max(1, self.warmup)
                return 0.04 + 0.96 * 0.5 * (1.0 - math.cos(math.pi * up))
            down = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            return 0.5 * (1.0 + math.cos(math.pi * down))
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    fn = WarmupDecay(warmup_steps(cfg, total_steps), total_steps, cfg.schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
