"""A contrastive stage for the frozen-encoder floor: pull same-label texts together first.

The floor of benchmarks/defaults.py fits a logistic regression on a frozen sentence encoder's
mean-pooled embeddings. Here the encoder is first trained with the engine's contrastive stage
(tailorml/train/contrastive.py: a supervised contrastive loss on class-balanced batches, a fixed
200 steps), so that texts with the same label lie close together; scikit-learn's regression is
then fitted on the trained encoder's embeddings as before. The eval split chooses only the
regression's C, as for the floor; the test file is never used to choose.

Used by `python benchmarks/defaults.py --modes contrastive` (results in docs/benchmarks.md, "A
contrastive stage before the output layer"). The engine's own run (`--modes auto`) fits the output
layer with train/probe.py instead of scikit-learn. The figures of 2026-12-06 were measured with
this file's earlier copy of the stage, which drew the same batches on those sets (every label had
at least 4 training rows) and computed the same loss.
"""

from __future__ import annotations

from typing import Any

from tailorml.train.contrastive import BATCH, LR, STEPS, TEMPERATURE, train_encoder


def train_body(
    enc: Any, tok: Any, texts: list[str], labels: list[Any], max_length: int, seed: int,
    steps: int = STEPS,
) -> dict[str, Any]:  # fmt: skip
    """Train `enc` (a transformers base model) in place on `texts` with `labels`; the loss at
    the first and last step and the settings."""
    import torch

    from tailorml.train.auto import choose_precision

    precision, _ = choose_precision("auto", cuda=False)  # bf16 where the CPU has it natively

    def inputs_of(idx: list[int]) -> Any:
        return tok([texts[i] for i in idx], padding=True, truncation=True,
                   max_length=max_length, return_tensors="pt")  # fmt: skip

    def autocast() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def show(step: int, loss: float, lr: float, samples: int) -> None:
        if step % 50 == 1 or step == steps:
            print(f"  contrastive step {step}/{steps} loss {loss:.4f}", flush=True)

    info = train_encoder(enc, labels, inputs_of, seed, steps, autocast, on_step=show)
    return {
        "steps": steps,
        "lr": LR,
        "temperature": TEMPERATURE,
        "batch": BATCH,
        "precision": precision,
        "loss_first_last": info["loss_first_last"],
    }
