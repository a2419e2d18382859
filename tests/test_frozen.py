"""`train.frozen_candidate`: after fine-tuning, the frozen encoder with a fitted output layer is
scored on eval and kept instead when it is strictly better; the run folder then holds it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tailorml.errors import ConfigError
from tailorml.recipes.finetune import finetune
from tailorml.train.frozen import choose, resolve

from .conftest import cfg_of, make_rows, tiny_config, write_csv


def test_auto_builds_the_candidate_for_a_pretrained_full_fine_tune_only() -> None:
    base = {"pretrained": True, "lora": False, "distill": False, "model_type": "bert"}
    assert resolve("auto", **base, has_output_layer=True)[0] is True
    assert resolve("auto", **{**base, "pretrained": False}, has_output_layer=True)[0] is False
    assert resolve("auto", **{**base, "lora": True}, has_output_layer=True)[0] is False
    assert resolve("auto", **{**base, "model_type": "llama"}, has_output_layer=True)[0] is False
    assert resolve(False, **base, has_output_layer=True) == (False, "set in the config")
    # `true` on a random encoder is allowed (a user's choice); where it cannot work, an error.
    assert resolve(True, **{**base, "pretrained": False}, has_output_layer=True)[0] is True
    with pytest.raises(ConfigError, match="train.frozen_candidate: true cannot apply"):
        resolve(True, **{**base, "lora": True}, has_output_layer=True)
    with pytest.raises(ConfigError, match="not one Linear layer"):
        resolve(True, **base, has_output_layer=False)


def test_the_frozen_candidate_wins_only_when_strictly_better() -> None:
    assert choose("accuracy", {"accuracy": 0.80}, {"accuracy": 0.81}) is True
    assert choose("accuracy", {"accuracy": 0.80}, {"accuracy": 0.80}) is False  # a tie: fine-tuned
    assert choose("accuracy", {"accuracy": 0.80}, {"accuracy": 0.79}) is False
    assert choose("mse", {"mse": 1.0}, {"mse": 0.5}) is True  # lower is better
    assert choose("accuracy", {"accuracy": 0.8}, {"loss": 0.1}) is False  # nothing to compare


def frozen_run(tmp: Path, lr: float, setting: Any = True, pooling: str = "auto") -> dict[str, Any]:
    tmp.mkdir()
    data = {
        k: str(write_csv(tmp / f"{k}.csv", make_rows(n, seed)))
        for k, n, seed in (("train", 240, 0), ("eval", 60, 1), ("test", 60, 2))
    }
    raw = tiny_config(tmp, data=data, model={"tiny_hidden_size": 64, "pooling": pooling})
    raw["train"].update(lr=lr, frozen_candidate=setting)
    if lr < 1e-6:  # one step at a vanishing rate: the fine-tuned model stays at chance
        raw["train"].update(max_steps=1)
        raw["train"].pop("epochs")
    return finetune(cfg_of(raw))


def test_a_fine_tune_that_learned_nothing_gives_way_to_the_frozen_encoder(tmp_path: Path) -> None:
    from tailorml.recipes.evaluate import evaluate_file

    res = frozen_run(tmp_path / "a", 1e-9)
    cand = res["candidates"]
    assert cand["kept"] == "frozen", cand["why"]
    # Mean-pooled states of even a random encoder are a bag of words: the fitted layer finds
    # the keyword; the fine-tuned model (one step at 1e-9, a random head) is about chance.
    assert cand["fine_tuned"]["eval"]["accuracy"] <= 0.6
    assert cand["frozen"]["eval"]["accuracy"] >= 0.7
    # eval.json reports the kept candidate's figures
    assert res["eval"]["accuracy"] == cand["frozen"]["eval"]["accuracy"]
    assert res["test"]["accuracy"] == cand["frozen"]["test"]["accuracy"]
    run = tmp_path / "a" / "run"
    assert json.loads((run / "eval.json").read_text())["candidates"]["kept"] == "frozen"
    # the run folder holds the frozen model, recorded as mean-pooled
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["pooling"] == "mean"
    auto = json.loads((run / "auto.json").read_text())
    assert auto["model.pooling"]["value"] == "mean"
    assert "kept the frozen encoder" in (run / "report.md").read_text()
    again = evaluate_file(run, tmp_path / "a" / "test.csv")
    assert again["accuracy"] == pytest.approx(res["test"]["accuracy"])


def test_a_good_fine_tune_is_kept_and_auto_skips_a_random_encoder(tmp_path: Path) -> None:
    # mean pooling fine-tuned learns the keyword too: level with the frozen candidate, and a
    # tie keeps the fine-tuned model
    res = frozen_run(tmp_path / "b", 3e-3, pooling="mean")
    cand = res["candidates"]
    assert cand["fine_tuned"]["eval"]["accuracy"] >= cand["frozen"]["eval"]["accuracy"], cand
    assert cand["kept"] == "fine_tuned"
    assert res["eval"]["accuracy"] == cand["fine_tuned"]["eval"]["accuracy"]
    assert "kept the fine-tuned model" in (tmp_path / "b" / "run" / "report.md").read_text()
    skipped = frozen_run(tmp_path / "c", 3e-3, setting="auto")
    assert "candidates" not in skipped
    auto = json.loads((tmp_path / "c" / "run" / "auto.json").read_text())
    assert auto["train.frozen_candidate"]["value"] is False
    # left out: off (the default), nothing built, nothing recorded as chosen
    raw = tiny_config(tmp_path / "d", data={"train": str(tmp_path / "b" / "train.csv")})
    assert cfg_of(raw).train.frozen_candidate is False


def test_a_multitask_run_compares_the_candidates_on_its_combined_metric(tmp_path: Path) -> None:
    from .test_multitask import mt_config

    raw = mt_config(tmp_path)
    raw["model"].update(tiny_hidden_size=64)
    raw["train"].update(max_steps=1, lr=1e-9, frozen_candidate=True)
    raw["train"].pop("epochs")
    res = finetune(cfg_of(raw))
    cand = res["candidates"]
    assert cand["metric"].startswith("mean_"), cand["metric"]
    assert cand["kept"] == "frozen", cand["why"]
    for head in ("sentiment", "topic"):  # each head's columns fitted on its own rows
        assert res["eval"]["heads"][head]["accuracy"] >= 0.6, res["eval"]["heads"][head]
    assert set(cand["frozen"]["fit"]["heads"]) == {"sentiment", "topic"}
