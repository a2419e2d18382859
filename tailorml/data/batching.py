"""Tokenization, length-bucketed batch order and dynamic padding.

Batches are planned globally (the same on every process) from a seeded generator, so the order
depends only on (seed, epoch): a resumed run replays it exactly, and in multi-process training
each rank takes its slice of every global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tailorml.data.examples import Examples


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[Any]
    n_truncated: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))


def encode(tokenizer: Any, ex: Examples, max_length: int) -> Encoded:
    """Tokenize once, up front. Over-long inputs are truncated and counted."""
    kwargs: dict[str, Any] = {"add_special_tokens": True, "return_attention_mask": False}
    full = tokenizer(ex.texts, ex.pairs, truncation=False, verbose=False, **kwargs)
    ids: list[list[int]] = full["input_ids"]
    types: list[list[int]] | None = full.get("token_type_ids")
    long_idx = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long_idx:
        sub_pairs = [ex.pairs[i] for i in long_idx] if ex.pairs is not None else None
        cut = tokenizer(
            [ex.texts[i] for i in long_idx],
            sub_pairs,
            truncation=True,
            max_length=max_length,
            **kwargs,
        )
        for j, i in enumerate(long_idx):
            ids[i] = cut["input_ids"][j]
            if types is not None:
                types[i] = cut["token_type_ids"][j]
    return Encoded(ids, types, list(ex.labels), len(long_idx))


def plan_batches(
    lengths: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    bucket: bool = True,
) -> list[np.ndarray]:
    """Global batch order for one epoch.

    With `bucket`, a shuffled permutation is cut into chunks of 50 batches, each chunk is sorted
    by length and cut into batches, and the batch order is shuffled: batches hold texts of similar
    length (little padding) while the epoch stays random.
    """
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable") if bucket else np.arange(n)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if not bucket:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    chunk = batch_size * 50
    batches: list[np.ndarray] = []
    for start in range(0, n, chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def plan_epoch(
    lengths: dict[str, np.ndarray], batch_size: int, seed: int, epoch: int, bucket: bool = True
) -> list[tuple[str, np.ndarray]]:
    """(head name, example indices) per global batch of one epoch.

    Each head's examples are planned on their own (length-bucketed, seeded by (seed + k, epoch)
    for the k-th head); with several heads the batches are interleaved in a seeded random order,
    so each epoch sees every example of every head once and the heads take turns in proportion
    to their data. With one head this is exactly `plan_batches`."""
    plans = {
        name: plan_batches(n_lengths, batch_size, seed + k, epoch, bucket=bucket)
        for k, (name, n_lengths) in enumerate(lengths.items())
    }
    tagged = [(name, b) for name, plan in plans.items() for b in plan]
    if len(plans) == 1:
        return tagged
    order = np.random.default_rng([seed, epoch, 7]).permutation(len(tagged))
    return [tagged[i] for i in order]


def shard(batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's slice of a global batch (interleaved, so lengths stay balanced)."""
    return batch[rank::world]


def collate(enc: Encoded, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest example. Returns tensors of shape (batch, seq_len); the
    targets come from the task (`Task.label_tensor`)."""
    seqs = [enc.input_ids[i] for i in idx]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if enc.token_type_ids is not None:
        tt = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, i in enumerate(idx):
            t = enc.token_type_ids[i]
            tt[r, : len(t)] = torch.as_tensor(t, dtype=torch.long)
        out["token_type_ids"] = tt
    return out
