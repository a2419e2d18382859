"""Batched inference over encoded examples (length-sorted, so padding stays small)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from tailorml.data.batching import Encoded, collate, plan_batches


@torch.inference_mode()
def predict_logits(
    model: Any,
    enc: Encoded,
    batch_size: int,
    pad_id: int,
    device: torch.device | str = "cpu",
    autocast: Any = None,
    rank: int = 0,
    world: int = 1,
) -> tuple[np.ndarray, list[int]]:
    """Logits of this rank's share of `enc`: (n_rank, num_labels) and their row indices.

    Batches are sorted by length; every `world`-th batch goes to this rank.
    """
    was_training = model.training
    model.eval()
    batches = plan_batches(enc.lengths, batch_size, seed=0, epoch=0, shuffle=False)
    outs: list[np.ndarray] = []
    rows: list[int] = []
    ctx = autocast if autocast is not None else contextlib.nullcontext
    for b in batches[rank::world]:
        inputs = collate(enc, b, pad_id)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with ctx():
            logits = model(**inputs).logits  # (batch, num_labels)
        outs.append(logits.float().cpu().numpy())
        rows.extend(int(i) for i in b)
    if was_training:
        model.train()
    n_labels = int(getattr(getattr(model, "config", None), "num_labels", 1) or 1)
    logits = np.concatenate(outs) if outs else np.zeros((0, n_labels), dtype=np.float32)
    return logits, rows


def ordered(logits: np.ndarray, rows: list[int], n: int) -> np.ndarray:
    """Put logits back in example order."""
    out = np.zeros((n, logits.shape[1]), dtype=logits.dtype)
    out[np.asarray(rows, dtype=np.int64)] = logits
    return out
