"""Layer-wise learning-rate decay (train.layer_lr_decay): which rate each parameter trains at."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from tailorml.config.schema import TrainConfig
from tailorml.recipes.finetune import finetune
from tailorml.train.optim import build_optimizer, depth_of

from .conftest import cfg_of
from .test_cooldown import raw_config, rows


def tiny_bert() -> torch.nn.Module:
    cfg = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=3,
    )  # fmt: skip
    return BertForSequenceClassification(cfg)


def rate_of(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr, weight decay) of its group."""
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def test_depths_of_the_usual_families() -> None:
    assert depth_of("bert.embeddings.word_embeddings.weight", 6) == 0
    assert depth_of("bert.encoder.layer.0.attention.self.query.weight", 6) == 1
    assert depth_of("model.layers.11.mlp.up_proj.weight", 12) == 12
    assert depth_of("transformer.h.3.attn.c_attn.weight", 12) == 4
    assert depth_of("classifier.weight", 6) == 7 and depth_of("lm_head.weight", 6) == 7


def test_each_layer_trains_at_its_own_rate() -> None:
    model = tiny_bert()
    plain = build_optimizer(model, TrainConfig(lr=1e-3))
    assert len(plain.param_groups) == 2  # as before: the same checkpoints load
    assert {g["lr"] for g in plain.param_groups} == {1e-3}
    rates = rate_of(build_optimizer(model, TrainConfig(lr=1e-3, layer_lr_decay=0.5)), model)
    assert rates["classifier.weight"] == (pytest.approx(1e-3), 0.01)
    assert rates["bert.pooler.dense.weight"][0] == pytest.approx(1e-3)
    assert rates["bert.encoder.layer.1.output.dense.weight"] == (pytest.approx(5e-4), 0.01)
    assert rates["bert.encoder.layer.0.output.dense.weight"][0] == pytest.approx(2.5e-4)
    # norms and biases keep no weight decay, at their layer's rate
    assert rates["bert.encoder.layer.0.output.LayerNorm.weight"] == (pytest.approx(2.5e-4), 0.0)
    assert rates["bert.embeddings.word_embeddings.weight"][0] == pytest.approx(1.25e-4)


def test_the_fresh_head_trains_at_its_own_rate() -> None:
    """`train.head_lr_scale`: the output layer (not the pretrained pooler) at lr x scale, alone
    or on top of layer-wise decay; without it, the two groups of a plain run."""
    model = tiny_bert()
    rates = rate_of(build_optimizer(model, TrainConfig(lr=1e-3, head_lr_scale=10)), model)
    assert rates["classifier.weight"] == (pytest.approx(1e-2), 0.01)
    assert rates["classifier.bias"] == (pytest.approx(1e-2), 0.0)
    assert rates["bert.pooler.dense.weight"][0] == pytest.approx(1e-3)
    assert rates["bert.embeddings.word_embeddings.weight"][0] == pytest.approx(1e-3)
    both = TrainConfig(lr=1e-3, head_lr_scale=10, layer_lr_decay=0.5)
    rates = rate_of(build_optimizer(model, both), model)
    assert rates["classifier.weight"][0] == pytest.approx(1e-2)
    assert rates["bert.encoder.layer.1.output.dense.weight"][0] == pytest.approx(5e-4)


def test_a_run_with_layer_decay_and_a_cooldown(tmp_path: Path, cls_data: dict[str, Path]) -> None:
    raw = raw_config(tmp_path, cls_data, "llrd", cooldown=True)
    raw["train"]["layer_lr_decay"] = 0.8
    cfg = cfg_of(raw)
    res = finetune(cfg)
    assert res["train"]["stopped_by"] == "early stopping, then a cool-down"
    lrs = {r["step"]: r["lr"] for r in rows(cfg.output_dir, "train")}
    # the logged rate is the top one (the output layer's): the configured lr after warmup
    assert max(lrs.values()) == pytest.approx(cfg.train.lr, rel=0.05)
    assert lrs[res["train"]["steps"]] == pytest.approx(0.0, abs=1e-12)
