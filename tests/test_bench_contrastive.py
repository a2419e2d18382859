"""benchmarks/contrastive.py: the supervised contrastive stage of the `contrastive` floor."""

from __future__ import annotations

import importlib.util
import random
from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F

from .conftest import REPO


def _contrastive() -> Any:
    path = REPO / "benchmarks" / "contrastive.py"
    spec = importlib.util.spec_from_file_location("contrastive", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_balanced_batch_draws_as_many_rows_of_each_label() -> None:
    c = _contrastive()
    rng = random.Random(0)
    many = {lab: list(range(lab * 10, lab * 10 + 10)) for lab in range(77)}  # 77 labels x 10
    counts = Counter(i // 10 for i in c.balanced_batch(many, rng))
    assert len(counts) == c.BATCH // c.PER_LABEL and set(counts.values()) == {c.PER_LABEL}
    few = {lab: list(range(lab * 90, lab * 90 + 90)) for lab in range(3)}  # 3 labels x 90
    idx = c.balanced_batch(few, rng)
    counts = Counter(i // 90 for i in idx)
    assert len(counts) == 3 and set(counts.values()) == {c.BATCH // 3}
    assert len(set(idx)) == len(idx)  # no row twice in a batch


def test_supcon_loss_is_lower_when_same_labels_lie_together() -> None:
    c = _contrastive()
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.eye(3)
    together = F.normalize(centres[y] + 0.01 * torch.randn(6, 3), dim=-1)
    crossed = F.normalize(centres[torch.tensor([0, 1, 2, 0, 1, 2])], dim=-1)
    low, high = c.supcon_loss(together, y, 0.05), c.supcon_loss(crossed, y, 0.05)
    assert torch.isfinite(low) and torch.isfinite(high)
    assert low < 0.1 < high
    # a row with no other row of its label is left out rather than counted as zero
    lone = torch.tensor([0, 0, 1])
    z = F.normalize(torch.randn(3, 4), dim=-1)
    assert torch.isfinite(c.supcon_loss(z, lone, 0.05))


def test_train_body_pulls_same_label_texts_together() -> None:
    from transformers import AutoModel

    from tailorml.models.base import load_tokenizer, resolve_base

    c = _contrastive()
    path = resolve_base("minilm")
    tok, enc = load_tokenizer(path), AutoModel.from_pretrained(str(path))
    texts = [f"{w} number {i}" for w in ("apple", "river", "engine", "violin") for i in range(6)]
    labels = [t.split()[0] if int(t.split()[-1]) % 2 else "odd-" + t.split()[0] for t in texts]
    first = c.train_body(enc, tok, texts, labels, 16, seed=0, steps=12)
    assert first["steps"] == 12 and first["loss_first_last"][1] < first["loss_first_last"][0]
    assert not enc.training
