"""`train.contrastive`: the encoder trained with a supervised contrastive loss for a fixed number
of steps, then the output layer fitted on its features, in place of fine-tuning on few rows."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tailorml.errors import ConfigError
from tailorml.recipes.finetune import finetune
from tailorml.tasks.heads import HeadSpec
from tailorml.train import contrastive
from tailorml.train.contrastive import balanced_batch, resolve, supcon_loss

from .conftest import cfg_of, make_rows, tiny_config, write_csv

HEAD = HeadSpec(name="", task="classification", labels=["a", "b"], offset=0, size=2)


def decide(setting: Any = "auto", rows_per_label: int = 20, **over: Any) -> tuple[bool, str]:
    kw: dict[str, Any] = {
        "pretrained": True,
        "lora": False,
        "distill": False,
        "model_type": "bert",
        "heads": [HEAD],
        "train_labels": {"": [0, 1] * rows_per_label},
        "processes": 1,
        "pooling": "auto",
    }
    return resolve(setting, **{**kw, **over})


def test_auto_turns_the_stage_on_for_few_rows_per_label_only() -> None:
    on, why = decide(rows_per_label=20)
    assert on and "20 training rows per label" in why
    assert decide(rows_per_label=100)[0] is True
    off, why = decide(rows_per_label=101)
    assert not off and "above 100" in why
    assert decide(pretrained=False)[0] is False  # a random encoder
    assert decide(lora=True)[0] is False
    assert decide(distill=True)[0] is False
    assert decide(processes=2)[0] is False
    assert decide(pooling="cls")[0] is False
    assert decide(model_type="llama")[0] is False
    off, why = decide(set_keys=("train.epochs",))  # a config that asks for fine-tuning gets it
    assert not off and "sets train.epochs" in why
    pairs = HeadSpec("", "classification", ["a", "b"], 0, 2, data={"text_pair_column": "b"})
    assert decide(heads=[pairs])[0] is False
    multi = HeadSpec("", "multilabel", ["a", "b"], 0, 2)
    assert decide(heads=[multi])[0] is False
    assert decide(heads=[HEAD, HEAD])[0] is False
    assert decide(False) == (False, "set in the config")
    # `true` is a user's choice where it can work (a random encoder, pairs), an error elsewhere
    assert decide(True, pretrained=False, rows_per_label=500)[0] is True
    with pytest.raises(ConfigError, match="train.contrastive: true cannot apply.*multilabel"):
        decide(True, heads=[multi])
    with pytest.raises(ConfigError, match="one label"):
        decide(True, train_labels={"": [0] * 10})
    assert decide(train_labels={"": [0] * 10})[0] is False


def test_supcon_loss_is_low_when_labels_cluster_and_high_when_they_do_not() -> None:
    y = torch.tensor([0, 0, 1, 1])
    points = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    clustered = torch.nn.functional.normalize(points, dim=1)
    crossed = clustered[[0, 2, 1, 3]]  # same vectors, each label's pair now far apart
    low, high = supcon_loss(clustered, y, 0.1), supcon_loss(crossed, y, 0.1)
    assert float(low) < 0.05 < float(high)
    # rows without a same-label partner only serve as negatives; none at all: a zero loss
    z = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(torch.nn.functional.normalize(z, dim=1), torch.tensor([0, 1, 2]), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_balanced_batches_draw_equal_rows_per_label_and_survive_a_label_with_one_row() -> None:
    rng = random.Random(0)
    by_label = {f"l{i}": list(range(i * 10, i * 10 + 10)) for i in range(30)}
    batch = balanced_batch(by_label, rng)
    labels = [i // 10 for i in batch]
    assert len(batch) == 64 and len(set(labels)) == 16
    assert {labels.count(lab) for lab in set(labels)} == {4}
    assert len(set(batch)) == len(batch)  # no row twice
    many = {lab: list(range(lab * 90, lab * 90 + 90)) for lab in range(3)}  # 3 labels x 90
    batch = balanced_batch(many, rng)
    assert sorted({i // 90 for i in batch}) == [0, 1, 2] and len(batch) == 3 * (64 // 3)
    few = {"a": [0], "b": [1, 2, 3, 4, 5], "c": [6, 7]}
    batch = balanced_batch(few, rng)  # 3 labels: up to 21 rows each, all a label has
    assert sorted(batch) == list(range(8))


def stage_run(tmp: Path, **train: Any) -> tuple[dict[str, Any], Path]:
    data = {
        k: str(write_csv(tmp / f"{k}.csv", make_rows(n, seed)))
        for k, n, seed in (("train", 90, 0), ("eval", 60, 1), ("test", 60, 2))
    }
    raw = tiny_config(tmp, data=data, model={"tiny_hidden_size": 64})
    raw["train"].update(train)
    return finetune(cfg_of(raw)), tmp / "run"


def test_the_stage_trains_the_encoder_fits_the_layer_and_saves_a_mean_pooled_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tailorml.recipes.evaluate import evaluate_file

    # The stage's rate suits a pretrained encoder; the random test encoder needs a larger one.
    monkeypatch.setattr(contrastive, "LR", 1e-3)
    res, run = stage_run(tmp_path, contrastive=True)
    tr = res["train"]
    assert tr["steps"] == contrastive.STEPS and tr["stopped_by"].startswith("a contrastive stage")
    curve = [
        r["loss"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "contrastive"
    ]
    # 3 labels x 21 rows a batch: the loss cannot go below log(20), each row's 20 same-label
    # partners sharing its probability mass; it gets there (the labels are perfectly clustered)
    assert len(curve) >= 20 and curve[0] > 4.0 and curve[-1] < math.log(20) + 0.05
    probe = json.loads((run / "probe.json").read_text())
    assert probe["heads"]["head"]["l2"] > 0
    # a keyword decides each label: the trained encoder separates them
    assert res["eval"]["accuracy"] >= 0.9 and res["test"]["accuracy"] >= 0.9
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["pooling"] == "mean"
    auto = json.loads((run / "auto.json").read_text())
    assert auto["model.pooling"]["value"] == "mean"
    assert "train.lr" not in auto and "train.warmup_ratio" not in auto  # not used: not shown
    assert not (run / "checkpoints" / "best").exists()
    report = (run / "report.md").read_text()
    assert "stopped by: a contrastive stage" in report and "- contrastive stage: 200" in report
    assert (run / "plots" / "loss.png").exists()
    # the saved folder is the model that was scored
    again = evaluate_file(run, tmp_path / "test.csv")
    assert again["accuracy"] == pytest.approx(res["test"]["accuracy"])


def test_auto_records_its_choice_and_a_random_encoder_fine_tunes(tmp_path: Path) -> None:
    res, run = stage_run(tmp_path, epochs=None, lr=None)  # nothing that asks for fine-tuning
    auto = json.loads((run / "auto.json").read_text())
    assert auto["train.contrastive"]["value"] is False
    assert "random encoder" in auto["train.contrastive"]["why"]
    assert "contrastive" not in res["train"]["stopped_by"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["contrastive"] is False


def test_tune_trials_fine_tune_unless_the_space_asks_for_the_stage(tmp_path: Path) -> None:
    from tailorml.tune.study import trial_config

    raw = tiny_config(tmp_path, data={"train": "t.csv"})
    raw["tune"] = {"space": {"train.lr": {"low": 1e-5, "high": 1e-3, "log": True}}}
    cfg = cfg_of(raw)
    assert cfg.train.contrastive == "auto"
    trial = trial_config(cfg, {"train.lr": 1e-4}, tmp_path / "trial-0", "accuracy")
    assert trial.train.contrastive is False
    trial = trial_config(cfg, {"train.contrastive": True}, tmp_path / "trial-1", "accuracy")
    assert trial.train.contrastive is True


def test_an_interrupted_stage_starts_over_with_the_same_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = contrastive.train_encoder

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # Ctrl-C in the middle of the stage

    monkeypatch.setattr(contrastive, "train_encoder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage_run(tmp_path, contrastive=True)
    assert "run the same command again, without --resume" in capsys.readouterr().err
    assert not (tmp_path / "run" / "eval.json").exists()
    monkeypatch.setattr(contrastive, "train_encoder", real)
    res, run = stage_run(tmp_path, contrastive=True)  # no --resume, no --overwrite needed
    assert res["train"]["steps"] == contrastive.STEPS and (run / "eval.json").exists()


def test_true_on_a_family_without_the_stage_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    from tailorml.recipes import training_recipe

    data = {"train": "t.jsonl", "prompt_column": "p", "response_column": "r"}
    raw = tiny_config(tmp_path, data=data, task={"type": "generation"})
    raw["train"]["contrastive"] = True
    with pytest.raises(ConfigError, match="train.contrastive: true trains text classifiers"):
        training_recipe(cfg_of(raw))
    raw["train"]["contrastive"] = "auto"  # the default is no problem anywhere
    assert callable(training_recipe(cfg_of(raw)))


def test_validate_reports_a_contrastive_stage_that_cannot_apply(tmp_path: Path) -> None:
    from tailorml.recipes.validate import validate_config

    rows = [{"text": r["text"], "label": f"{r['label']},{r['label']}"} for r in make_rows(30)]
    raw = tiny_config(tmp_path, data={"train": str(write_csv(tmp_path / "t.csv", rows))})
    raw["task"] = {"type": "multilabel"}
    raw["data"]["label_separator"] = ","
    raw["train"]["contrastive"] = True
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    problems = validate_config(path)
    assert any("train.contrastive: true cannot apply" in p and "multilabel" in p for p in problems)
    raw["task"] = {"type": "classification"}
    raw["data"].pop("label_separator")
    raw["data"]["train"] = str(write_csv(tmp_path / "c.csv", make_rows(30)))
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert validate_config(path) == []  # a single-label classifier: the stage applies
    raw["task"] = {"type": "generation"}
    raw["data"].update(prompt_column="text", response_column="label")
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    problems = validate_config(path)
    assert any("train.contrastive: true trains text classifiers" in p for p in problems)
