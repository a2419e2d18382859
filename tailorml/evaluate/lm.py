"""Token loss of a causal LM over a set of chats (eval loss and perplexity)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch

from tailorml.data.sft import ChatEncoded, collate_lm
from tailorml.models.causal_lm import token_loss_sums


def loss_sum(
    model: Any,
    enc: ChatEncoded,
    units: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    packed: bool,
    device: torch.device | str = "cpu",
    autocast: Any = None,
    rank: int = 0,
    world: int = 1,
) -> tuple[float, int]:
    """(summed token loss, learned tokens) over this rank's share of `units` (every `world`-th
    batch): the caller sums over ranks and divides."""
    was_training = model.training
    model.eval()
    ctx = autocast if autocast is not None else contextlib.nullcontext
    total, tokens = 0.0, 0
    batches = [units[i : i + batch_size] for i in range(0, len(units), batch_size)]
    with torch.inference_mode():
        for b in batches[rank::world]:
            batch = {k: v.to(device) for k, v in collate_lm(enc, b, pad_id, packed).items()}
            with ctx():
                sums, counts = token_loss_sums(model, batch)
            total += float(sums.sum())
            tokens += int(counts.sum())
    if was_training:
        model.train()
    return total, tokens


def perplexity_metrics(total: float, tokens: int) -> dict[str, float]:
    """Mean token loss over the learned (answer) tokens, and its perplexity (exp of it)."""
    loss = total / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
