"""Structured pruning of a BERT-style encoder: remove whole attention heads and FFN neurons, so
the matrices really shrink (and the model runs faster), chosen by first-order importance.

Importance of a head or a neuron is the Taylor estimate of the loss change when it is removed,
|sum(w * dL/dw)| summed over every weight that belongs to it (Molchanov et al. 2019), accumulated
over a few batches of training data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tailorml.errors import ConfigError


@dataclass
class PrunePlan:
    heads_kept: list[list[int]]  # per layer, head indices kept
    neurons_kept: list[list[int]]  # per layer, FFN neuron indices kept


def encoder_layers(model: Any) -> Any:
    """The encoder's list of transformer layers (BERT, RoBERTa, ... `*.encoder.layer`)."""
    base = getattr(model, model.base_model_prefix, None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(layers[0], "attention"):
        raise ConfigError(
            f"Pruning and distillation support BERT-style encoders (`encoder.layer`); "
            f"{type(model).__name__} is not one. Choose --variants without pruned/distilled."
        )
    return layers


def _head_size(model: Any) -> int:
    return int(model.config.hidden_size // model.config.num_attention_heads)


def importance(model: Any, batches: list[dict[str, torch.Tensor]]) -> tuple[Any, Any]:
    """(heads (layers, heads_now), neurons (layers, ffn_now)) importance scores."""
    layers = encoder_layers(model)
    hs = _head_size(model)
    model.train()
    model.zero_grad(set_to_none=True)
    for batch in batches:
        out = model(**batch)
        out.loss.backward()
    heads, neurons = [], []
    for layer in layers:
        att = layer.attention
        q, k, v, o = att.self.query, att.self.key, att.self.value, att.output.dense
        n_heads = q.weight.shape[0] // hs
        per_row = sum(
            (lin.weight * lin.weight.grad).sum(1) + lin.bias * lin.bias.grad for lin in (q, k, v)
        )  # (heads*head_size,)
        per_col = (o.weight * o.weight.grad).sum(0)  # (heads*head_size,)
        heads.append((per_row + per_col).view(n_heads, hs).sum(1).abs().detach())
        up, down = layer.intermediate.dense, layer.output.dense
        score = (up.weight * up.weight.grad).sum(1) + up.bias * up.bias.grad
        score = score + (down.weight * down.weight.grad).sum(0)
        neurons.append(score.abs().detach())
    model.zero_grad(set_to_none=True)
    model.eval()
    return heads, neurons


def kept_count(n: int, fraction: float) -> int:
    """How many of `n` heads (or neurons) stay when `fraction` of them is removed (at least 1)."""
    return max(1, math.floor(n * (1 - fraction) + 1e-9))


def plan(
    heads: Any,
    neurons: Any,
    head_fraction: float,
    ffn_fraction: float,
    keep: tuple[int, int] | None = None,
) -> PrunePlan:
    """Remove the least important share of heads and neurons in every layer (at least one head
    and one neuron stay); `keep` gives the counts to keep instead of the shares."""
    kept_h, kept_n = [], []
    for h, n in zip(heads, neurons, strict=True):
        keep_h = keep[0] if keep else kept_count(len(h), head_fraction)
        keep_n = keep[1] if keep else kept_count(len(n), ffn_fraction)
        kept_h.append(sorted(torch.topk(h, min(keep_h, len(h))).indices.tolist()))
        kept_n.append(sorted(torch.topk(n, min(keep_n, len(n))).indices.tolist()))
    return PrunePlan(kept_h, kept_n)


def schedule(n: int, fraction: float, steps: int) -> list[int]:
    """Counts kept after each of `steps` steps that together remove `fraction` of `n`: every
    step keeps the same share of what is left, and the last one lands where one shot would."""
    last = kept_count(n, fraction)
    out = [max(last, round(n * (1 - fraction) ** (i / steps))) for i in range(1, steps)]
    return [*out, last]


def prunable_params(model: Any) -> int:
    """Parameters that shrink with the heads and FFN neurons removed: the query, key and value
    projections (weights and biases), the attention output's weight, the FFN's two weights and
    its first bias, over every layer (embeddings, LayerNorms and the head stay)."""
    total = 0
    for layer in encoder_layers(model):
        att = layer.attention
        for lin in (att.self.query, att.self.key, att.self.value, layer.intermediate.dense):
            total += lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
        total += att.output.dense.weight.numel() + layer.output.dense.weight.numel()
    return int(total)


def fraction_for_params(model: Any, target: int) -> float:
    """The share of heads and FFN neurons to remove (the same in every layer) that brings the
    model to about `target` parameters."""
    total, shrinkable = count_params(model), prunable_params(model)
    floor = total - shrinkable
    if not floor < target < total:
        raise ConfigError(
            f"--prune-target-params {target}: the model has {total} parameters, {floor} of them "
            "in embeddings, LayerNorms and the head, which pruning keeps; give a number between "
            "the two."
        )
    return (total - target) / shrinkable


def _slice(lin: torch.nn.Linear, idx: torch.Tensor, dim: int) -> torch.nn.Linear:
    """A smaller Linear keeping rows (dim 0, outputs) or columns (dim 1, inputs) `idx`."""
    w = lin.weight.detach().index_select(dim, idx).clone()
    b = None
    if lin.bias is not None:
        b = lin.bias.detach().clone() if dim == 1 else lin.bias.detach()[idx].clone()
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def apply(model: Any, p: PrunePlan) -> Any:
    """Shrink the model in place. The config keeps the original head size (attention reshapes
    with -1 heads) and is marked `tailorml_pruned`, so `load_classifier` rebuilds the shapes."""
    layers = encoder_layers(model)
    hs = _head_size(model)
    for layer, heads, neurons in zip(layers, p.heads_kept, p.neurons_kept, strict=True):
        att = layer.attention
        rows = torch.tensor([h * hs + j for h in heads for j in range(hs)], dtype=torch.long)
        att.self.query = _slice(att.self.query, rows, 0)
        att.self.key = _slice(att.self.key, rows, 0)
        att.self.value = _slice(att.self.value, rows, 0)
        att.output.dense = _slice(att.output.dense, rows, 1)
        att.self.num_attention_heads = len(heads)
        att.self.all_head_size = len(heads) * hs
        keep = torch.tensor(neurons, dtype=torch.long)
        layer.intermediate.dense = _slice(layer.intermediate.dense, keep, 0)
        layer.output.dense = _slice(layer.output.dense, keep, 1)
    model.config.tailorml_pruned = True
    model.config.tailorml_heads_per_layer = [len(h) for h in p.heads_kept]
    model.config.tailorml_ffn_per_layer = [len(n) for n in p.neurons_kept]
    return model


def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
