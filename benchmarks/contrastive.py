"""A contrastive stage for the frozen-encoder floor: pull same-label texts together first.

The floor of benchmarks/defaults.py fits a logistic regression on a frozen sentence encoder's
mean-pooled embeddings. Here the encoder is first trained for a fixed number of steps with a
supervised contrastive loss (Khosla et al., 2020) on class-balanced batches of the training rows
(each batch: up to 16 labels, the same number of rows of each), so that texts with the same label
lie close together; the regression is then fitted on the trained encoder's embeddings as before.
This is the idea behind SetFit (Tunstall et al., 2022: contrastive pairs, then a linear head),
with in-batch positives and negatives instead of sampled pairs. The eval split chooses only the
regression's C, as for the floor; the test file is never used to choose.

Used by `python benchmarks/defaults.py --modes contrastive` (results in docs/benchmarks.md, "A
contrastive stage before the output layer").
"""

from __future__ import annotations

import math
import random
from typing import Any

STEPS = 200  # a fixed budget: a few hundred training rows see each row 20-50 times
LR = 2e-5
TEMPERATURE = 0.05
BATCH = 64
PER_LABEL = 4  # rows of each label in a batch (more when there are fewer than 16 labels)


def balanced_batch(by_label: dict[Any, list[int]], rng: random.Random) -> list[int]:
    """Row indices of one batch: `BATCH // k` labels drawn at random, `k` rows of each."""
    labels = list(by_label)
    n_labels = min(len(labels), BATCH // PER_LABEL)
    k = min(BATCH // n_labels, min(len(v) for v in by_label.values()))
    return [i for lab in rng.sample(labels, n_labels) for i in rng.sample(by_label[lab], k)]


def supcon_loss(z: Any, y: Any, temperature: float) -> Any:
    """Supervised contrastive loss of L2-normalised rows `z` with labels `y` (each row's mean
    log-probability of its same-label rows among all other rows of the batch)."""
    import torch

    n = z.shape[0]
    sim = (z @ z.T) / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    positive = (y[:, None] == y[None, :]) & ~self_mask
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(self_mask, 0.0)
    counts = positive.sum(1)
    per_row = -(log_prob * positive).sum(1) / counts.clamp(min=1)
    return per_row[counts > 0].mean()


def train_body(
    enc: Any, tok: Any, texts: list[str], labels: list[Any], max_length: int, seed: int,
    steps: int = STEPS,
) -> dict[str, Any]:  # fmt: skip
    """Train `enc` in place with the supervised contrastive loss; the loss curve and settings."""
    import torch

    from tailorml.models.sentence import embed
    from tailorml.train.auto import choose_precision

    precision, _ = choose_precision("auto", cuda=False)  # bf16 where the CPU has it natively
    torch.manual_seed(seed)
    rng = random.Random(seed)
    by_label: dict[Any, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    if len(by_label) < 2:
        raise ValueError("a contrastive stage needs at least two labels in the training rows")
    opt = torch.optim.AdamW(enc.parameters(), lr=LR, weight_decay=0.01)
    warmup = max(1, math.ceil(0.1 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps)
    )
    ids = {y: j for j, y in enumerate(by_label)}
    enc.train()
    curve = []
    for step in range(steps):
        idx = balanced_batch(by_label, rng)
        batch = tok([texts[i] for i in idx], padding=True, truncation=True,
                    max_length=max_length, return_tensors="pt")  # fmt: skip
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            z = embed(enc, batch).float()  # unit-length mean-pooled vectors
        y = torch.tensor([ids[labels[i]] for i in idx])
        loss = supcon_loss(z, y, TEMPERATURE)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        curve.append(round(loss.item(), 4))
        if step % 50 == 0 or step == steps - 1:
            print(f"  contrastive step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    enc.eval()
    return {
        "steps": steps,
        "lr": LR,
        "temperature": TEMPERATURE,
        "batch": BATCH,
        "precision": precision,
        "loss_first_last": [curve[0], curve[-1]] if curve else None,
    }
