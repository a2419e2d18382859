"""AdamW with decoupled weight decay (not on biases and norms) and warmup + decay schedules."""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from tailorml.config.schema import TrainConfig
from tailorml.models.lora import head_modules

# "...layer.3..." (BERT), "...layers.3..." (Llama, SmolLM), "...h.3..." (GPT-2)
LAYER_RE = re.compile(r"\.(?:layers?|h)\.(\d+)\.")


def depth_of(name: str, n_layers: int) -> int:
    """0 for the embeddings, i + 1 for transformer layer i, n_layers + 1 above (pooler, heads)."""
    m = LAYER_RE.search(name)
    if m:
        return int(m.group(1)) + 1
    return 0 if "embed" in name.lower() else n_layers + 1


HEAD = -1  # the depth key of the task head's groups under `head_lr_scale`


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    found = [int(m.group(1)) for n, _ in named if (m := LAYER_RE.search(n))]
    n_layers = max(found) + 1 if found else 0
    # (weight decay on, depth) -> parameters; one depth unless layer-wise decay is on. The two
    # groups of a plain run always exist, in this order, so that its checkpoints load.
    # `head_lr_scale`: the task head's parameters (depth HEAD) get their own groups.
    heads = set(head_modules(model)) if cfg.head_lr_scale is not None else set()
    by_key: dict[tuple[bool, int], list[torch.nn.Parameter]] = {(True, 0): [], (False, 0): []}
    for name, p in named:
        # Biases and LayerNorm weights are 1-D; decaying them hurts and buys nothing.
        decays = not (p.ndim < 2 or "norm" in name.lower())
        depth = depth_of(name, n_layers) if cfg.layer_lr_decay is not None else 0
        depth = HEAD if name.split(".", 1)[0] in heads else depth
        by_key.setdefault((decays, depth), []).append(p)
    groups: list[dict[str, Any]] = []
    for (decays, depth), params in by_key.items():
        if not params and (cfg.layer_lr_decay is not None or depth == HEAD):
            continue
        group: dict[str, Any] = {
            "params": params,
            "weight_decay": cfg.weight_decay if decays else 0.0,
        }
        if cfg.lr is not None and depth == HEAD:
            group["lr"] = cfg.lr * float(cfg.head_lr_scale or 1.0)
        elif cfg.layer_lr_decay is not None and cfg.lr is not None:
            group["lr"] = cfg.lr * cfg.layer_lr_decay ** (n_layers + 1 - depth)
        groups.append(group)
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
        # A cool-down after early stopping (train.cooldown): from step `cool_start` the
        # multiplier falls linearly from `cool_from` to 0 over `cool_steps` steps.
        self.cool_start: int | None = None
        self.cool_steps, self.cool_from = 1, 1.0

    def cool_down(self, start: int, steps: int, start_multiplier: float) -> None:
        self.cool_start, self.cool_steps, self.cool_from = start, max(1, steps), start_multiplier

    def __call__(self, step: int) -> float:
        if self.cool_start is not None and step >= self.cool_start:
            left = 1.0 - min(1.0, (step - self.cool_start) / self.cool_steps)
            return self.cool_from * left
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
