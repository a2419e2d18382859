"""Training settings chosen from the data and the model when the config leaves them out.

A config that names only its data, columns and base model should train well without anyone
knowing the right learning rate or epoch count. Keys the config sets always win; each chosen
value comes with the reason, printed at the start of the run and kept in the run folder
(`config.yaml` holds the values used, `auto.json` the reasons).

    train.lr      by the encoder's width: small encoders (MiniLM, hidden 384) train well at
                  1e-4, BERT-base-sized ones (768) at 5e-5, larger ones at 2e-5; LoRA
                  (`model.lora`) 30 times that (3e-3 for MiniLM, measured: docs/benchmarks.md)
    train.epochs  until the eval metric and the eval loss stop improving (early stopping,
                  patience 2, the loss counting when 1% under its lowest; the best checkpoint,
                  by the metric, ties to the lower loss, restored), within a budget of about
                  3,000 optimizer steps: many epochs for a few hundred rows, 3 for a hundred
                  thousand (at least 3, at most 40)
    warmup        6% of the steps
    evaluation    once per epoch, and at least every 500 steps on large sets (so that early
                  stopping can act within an epoch)
    precision     `auto`: bf16 autocast on CUDA and on CPUs that compute bf16 natively (AMX or
                  AVX-512 BF16), fp32 elsewhere (on other CPUs bf16 is emulated and slower)
"""

from __future__ import annotations

import math
from typing import Any

from tailorml import env
from tailorml.config.schema import TrainConfig

TARGET_STEPS = 3000
MIN_EPOCHS, MAX_EPOCHS = 3, 40
PATIENCE = 2
WARMUP_RATIO = 0.06
ONECYCLE_WARMUP = 0.25
EVAL_AT_LEAST_EVERY = 500
# LoRA's learning rate over full fine-tuning's. Measured on MiniLM (docs/benchmarks.md, "LoRA"):
# 3e-3 matched full fine-tuning at 1e-4, while 1e-3 and 5e-4 lagged by 5 and 9 points. Other
# widths get the same ratio (not measured).
LORA_LR_FACTOR = 30


def lr_for_width(hidden: int | None) -> float:
    if hidden is None or hidden <= 512:
        return 1e-4
    if hidden <= 768:
        return 5e-5
    return 2e-5


def resolve(
    t: TrainConfig, steps_per_epoch: int, hidden: int | None, lora: bool = False
) -> tuple[TrainConfig, dict]:
    """`t` with every left-out setting chosen, and {key: {"value", "why"}} for what was chosen.
    `lora`: the model trains LoRA adapters (a larger learning rate)."""
    chosen: dict[str, dict[str, Any]] = {}
    update: dict[str, Any] = {}
    if t.lr is None:
        lr = lr_for_width(hidden)
        why = f"encoder hidden size {hidden or 'unknown'}"
        if lora:
            lr = round(lr * LORA_LR_FACTOR, 10)
            why += f", LoRA: {LORA_LR_FACTOR}x the full fine-tuning rate"
        update["lr"] = lr
        chosen["train.lr"] = {"value": lr, "why": why}
    if t.epochs is None and t.max_steps is None:
        epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / max(1, steps_per_epoch))))
        update["epochs"] = float(epochs)
        chosen["train.epochs"] = {
            "value": epochs,
            "why": f"at most ~{TARGET_STEPS} steps at {steps_per_epoch} steps per epoch "
            f"(between {MIN_EPOCHS} and {MAX_EPOCHS}); early stopping ends it sooner",
        }
        if t.early_stopping_patience is None:
            update["early_stopping_patience"] = PATIENCE
            chosen["train.early_stopping_patience"] = {
                "value": PATIENCE,
                "why": "the epoch count is a budget: stop when neither the eval metric nor the "
                "eval loss improves",
            }
        if t.eval_every_steps is None and steps_per_epoch > EVAL_AT_LEAST_EVERY:
            every = math.ceil(steps_per_epoch / math.ceil(steps_per_epoch / EVAL_AT_LEAST_EVERY))
            update["eval_every_steps"] = every
            chosen["train.eval_every_steps"] = {
                "value": every,
                "why": f"an epoch is {steps_per_epoch} steps: evaluate within it",
            }
    if t.warmup_steps is None and t.warmup_ratio is None:
        if t.schedule == "onecycle":
            update["warmup_ratio"] = ONECYCLE_WARMUP
            chosen["train.warmup_ratio"] = {"value": ONECYCLE_WARMUP, "why": "one cycle: 25% up"}
        else:
            update["warmup_ratio"] = WARMUP_RATIO
            chosen["train.warmup_ratio"] = {"value": WARMUP_RATIO, "why": "6% of the steps"}
    return t.model_copy(update=update), chosen


def choose_precision(setting: str, cuda: bool, flags: set[str] | None = None) -> tuple[str, str]:
    """("bf16" or "fp32", why) for `train.precision`; `flags` default to this CPU's."""
    if setting != "auto":
        return setting, "set in the config"
    if cuda:
        return "bf16", "a CUDA device (bf16 autocast)"
    flags = env.cpu_flags() if flags is None else flags
    native = [f for f in env.NATIVE_BF16 if f in flags]
    if native:
        return "bf16", f"this CPU computes bf16 natively ({', '.join(native)})"
    return "fp32", "this CPU has no native bf16 (no AMX / AVX-512 BF16): bf16 would be emulated"
