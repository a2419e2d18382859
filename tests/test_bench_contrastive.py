"""benchmarks/contrastive.py: the supervised contrastive stage of the `contrastive` floor."""

from __future__ import annotations

import importlib.util
from typing import Any

from .conftest import REPO


def _contrastive() -> Any:
    path = REPO / "benchmarks" / "contrastive.py"
    spec = importlib.util.spec_from_file_location("contrastive", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
