"""Multi-task fine-tuning: one encoder, several heads, each with its own data and task."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tailorml.config.load import dump_config, load_config, validate_mapping
from tailorml.errors import ConfigError, DataError

from .conftest import assert_same_weights, make_rows, tiny_config, write_config, write_csv

TOPICS = {"sports": ["match", "goal", "league"], "tech": ["chip", "software", "cloud"]}


def topic_rows(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """A second, disjoint labeled set: the topic is given by a keyword, independent of sentiment."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = list(TOPICS)[i % 2]
        words = [
            rng.choice(["the", "today", "new", "said", "its"]) for _ in range(rng.randint(2, 9))
        ]
        words.insert(rng.randint(0, len(words)), rng.choice(TOPICS[topic]))
        rows.append({"body": " ".join(words), "topic": topic})
    return rows


def mt_config(tmp: Path, **train: Any) -> dict[str, Any]:
    sent = write_csv(tmp / "sent.csv", make_rows(300, seed=3))
    top = write_csv(tmp / "topic.csv", topic_rows(160))
    cfg = tiny_config(tmp, train={"epochs": 10, **train})
    del cfg["data"], cfg["task"]
    cfg["heads"] = {
        "sentiment": {"data": {"train": str(sent), "max_length": 32}},
        "topic": {
            "data": {"train": str(top), "text_column": "body", "label_column": "topic"},
            "task": {"type": "classification"},
        },
    }
    return cfg


def test_multitask_config_errors_name_the_head(tmp_path: Path) -> None:
    cfg = mt_config(tmp_path)
    cfg["data"] = {"train": "x.csv"}
    cfg["heads"]["topic"]["data"].pop("train")
    cfg["heads"]["bad name!"] = {"data": {"train": "y.csv"}}
    _, problems = validate_mapping(cfg)
    text = "\n".join(problems)
    assert "`heads.topic.data.train` is not set" in text
    assert "`data.train` is set at the top level and `heads` is set too" in text
    assert "`heads.bad name!`" in text


def test_multitask_trains_both_heads_and_saves_one_model(tmp_path: Path) -> None:
    from tailorml.predictors import load_predictor
    from tailorml.recipes.finetune import finetune
    from tailorml.tasks.heads import head_specs, split_logits

    cfg = load_config(write_config(tmp_path, mt_config(tmp_path)))
    res = finetune(cfg)
    heads = res["eval"]["heads"]
    assert set(heads) == {"sentiment", "topic"}
    # Both heads learned their keyword task on the shared encoder.
    assert heads["sentiment"]["accuracy"] >= 0.9, heads["sentiment"]
    assert heads["topic"]["accuracy"] >= 0.9, heads["topic"]
    assert res["eval"]["mean_accuracy"] == pytest.approx(
        (heads["sentiment"]["accuracy"] + heads["topic"]["accuracy"]) / 2
    )
    assert res["train"]["metric_for_best"] == "mean_accuracy"

    model_dir = Path(cfg.output_dir) / "model"
    info = json.loads((model_dir / "task.json").read_text())
    specs = head_specs(info)
    assert [(h.name, h.offset, h.size) for h in specs] == [("sentiment", 0, 3), ("topic", 3, 2)]
    assert info["labels"][:4] == [
        "sentiment:negative",
        "sentiment:neutral",
        "sentiment:positive",
        "topic:sports",
    ]
    # One forward pass gives both heads; the runtime labels each head on its own.
    pred = load_predictor(model_dir)
    texts = ["the chip crash today", "a great goal said"]
    logits = pred.predict(texts)
    assert logits.shape == (2, 5)
    parts = split_logits(info, logits)
    assert parts["topic"].argmax(1).tolist() == [1, 0]
    assert parts["sentiment"].argmax(1).tolist() == [0, 2]
    out = pred.format(logits)
    assert out[0]["heads"]["topic"]["label"] == "tech"
    assert out[1]["heads"]["sentiment"]["label"] == "positive"
    # The report has a section and plots per head.
    report = (Path(cfg.output_dir) / "report.md").read_text()
    assert "## Head `topic`" in report and "confusion_matrix_sentiment.png" in report
    assert (Path(cfg.output_dir) / "plots" / "confusion_matrix_topic.png").is_file()
    # The saved config reloads as written (data/task live under the heads), with the values
    # the run chose for what the config left out (auto.json says which).
    again = load_config(Path(cfg.output_dir) / "config.yaml")
    assert again.heads is not None and set(again.heads) == {"sentiment", "topic"}
    chosen = json.loads((Path(cfg.output_dir) / "auto.json").read_text())
    as_run = load_config(
        write_config(tmp_path, mt_config(tmp_path), "again.yaml"),
        [f"{k}={v['value']}" for k, v in chosen.items()],
    )
    assert dump_config(again) == dump_config(as_run)


def test_multitask_plan_interleaves_heads_and_covers_each_example_once() -> None:
    from tailorml.data.batching import plan_epoch

    lengths = {"a": np.arange(100) % 7 + 3, "b": np.arange(40) % 5 + 3}
    plan = plan_epoch(lengths, 8, seed=0, epoch=0)
    seen = {"a": sorted(int(i) for h, b in plan if h == "a" for i in b)}
    seen["b"] = sorted(int(i) for h, b in plan if h == "b" for i in b)
    assert seen == {"a": list(range(100)), "b": list(range(40))}
    names = [h for h, _ in plan]
    assert names != sorted(names)  # interleaved, not one head after the other
    assert plan_epoch(lengths, 8, seed=0, epoch=0)[5][0] == plan[5][0]  # deterministic
    assert [h for h, _ in plan_epoch(lengths, 8, seed=0, epoch=1)] != names


def test_multitask_metric_for_best_is_checked(tmp_path: Path) -> None:
    from tailorml.recipes.finetune import finetune

    cfg = load_config(write_config(tmp_path, mt_config(tmp_path, metric_for_best="accuracy")))
    with pytest.raises(ConfigError, match="mean_accuracy"):
        finetune(cfg)


def test_multitask_bad_rows_name_the_head(tmp_path: Path) -> None:
    from tailorml.recipes.finetune import finetune

    raw = mt_config(tmp_path)
    rows = topic_rows(20)
    rows[3]["body"] = ""
    raw["heads"]["topic"]["data"]["train"] = str(write_csv(tmp_path / "bad.csv", rows))
    with pytest.raises(DataError) as exc:
        finetune(load_config(write_config(tmp_path, raw)))
    assert any(p.startswith("heads.topic:") and "bad.csv" in p for p in exc.value.problems)


def test_predict_sorted_matches_one_padded_batch(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tailorml.predictors import load_predictor
    from tailorml.recipes.finetune import finetune

    raw = mt_config(tmp_path, epochs=1)
    finetune(load_config(write_config(tmp_path, raw)))
    pred = load_predictor(tmp_path / "run" / "model", threads=1)
    texts = [r["text"] for r in make_rows(37, seed=9)]
    whole = pred.predict(texts)
    with ThreadPoolExecutor(2) as pool:
        for chunk, p in ((1, None), (5, pool), (64, None)):
            got = pred.predict_sorted(texts, chunk, p)
            # Same rows in the same order; only padding differs (masked, so tiny float noise).
            np.testing.assert_allclose(got, whole, atol=1e-4)
    assert pred.predict_sorted([], 4).shape[0] == 0


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tailorml.recipes.finetune import finetune

    tmp = tmp_path_factory.mktemp("mt_run")
    finetune(load_config(write_config(tmp, mt_config(tmp))))
    return tmp / "run"


def test_multitask_compresses_per_head_and_serves_heads(mt_run: Path) -> None:
    import httpx

    from tailorml.config.compress import CompressOptions
    from tailorml.predictors import load_predictor
    from tailorml.recipes.compress import compress

    from .serve_helpers import ThreadServer

    with pytest.raises(ConfigError, match="multi-task run: pruned"):
        compress(mt_run, CompressOptions(variants=["pruned"]))
    with pytest.raises(ConfigError, match="Leave out --data"):
        compress(mt_run, CompressOptions(variants=["onnx-int8"], data=mt_run / "x.csv"))
    opts = CompressOptions(variants=["torch-int8", "onnx-int8"], repeats=1, latency_texts=20)
    result = compress(mt_run, opts)
    by = {v["name"]: v for v in result["variants"]}
    assert set(by) == {"fp32", "torch-int8", "onnx-int8"}
    eval_json = json.loads((mt_run / "eval.json").read_text())
    for name, v in by.items():
        assert set(v["heads"]) == {"sentiment", "topic"}, name
        # Each head is measured on its own eval split; the headline is their mean.
        mean = (v["heads"]["sentiment"]["accuracy"] + v["heads"]["topic"]["accuracy"]) / 2
        assert v["accuracy"] == pytest.approx(mean)
    for head in ("sentiment", "topic"):  # fp32 reproduces the engine's own eval figures
        assert by["fp32"]["heads"][head]["accuracy"] == pytest.approx(
            eval_json["eval"]["heads"][head]["accuracy"]
        )
    assert "| variant | sentiment acc" in (mt_run / "compression.md").read_text()

    onnx = load_predictor(mt_run / "compressed" / "onnx-int8", threads=1)
    assert onnx.runtime == "onnxruntime" and onnx.task == "multitask"
    texts = ["the chip crash today", "a great goal said"]
    with ThreadServer(onnx) as srv:
        resp = httpx.post(srv.url + "/v1/predict", json={"inputs": texts}, timeout=30)
        assert resp.status_code == 200, resp.text
        preds = resp.json()["predictions"]
        card = httpx.get(srv.url + "/v1/models").json()["models"][0]
    direct = onnx.format(onnx.predict(texts), top_k=5)
    for got, want in zip(preds, direct, strict=True):
        assert set(got["heads"]) == {"sentiment", "topic"}
        for head in ("sentiment", "topic"):
            assert got["heads"][head]["label"] == want["heads"][head]["label"]
            assert got["heads"][head]["score"] == pytest.approx(want["heads"][head]["score"])
            assert sum(got["heads"][head]["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert card["task"] == "multitask"


def test_evaluate_one_head_of_a_multitask_run(mt_run: Path, tmp_path: Path) -> None:
    from tailorml.recipes.evaluate import evaluate_file

    data = write_csv(tmp_path / "t.csv", topic_rows(40, seed=5))
    with pytest.raises(ConfigError, match="pass --head NAME"):
        evaluate_file(mt_run, data)
    m = evaluate_file(mt_run, data, head="topic", text_column="body", label_column="topic")
    assert m["accuracy"] >= 0.9 and m["labels"] == ["sports", "tech"]


@pytest.mark.slow  # the finwatch trainer as a child process (~15 s); trained in-process above
def test_finwatch_train_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    raw = mt_config(tmp_path, epochs=1)
    raw["heads"] = {"topic": raw["heads"]["topic"], "sentiment": raw["heads"]["sentiment"]}
    cfg = write_config(tmp_path, raw)
    cli = [sys.executable, "-m", "tailorml.cli", "finwatch", "train"]
    res = subprocess.run([*cli, str(cfg)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert set(out["heads"]) == {"topic", "sentiment"}
    assert 0 <= out["heads"]["topic"]["eval"]["accuracy"] <= 1
    assert (Path(out["model"]) / "task.json").is_file()
    # A config without the two heads is refused with the fix.
    raw["heads"] = {"news": raw["heads"]["topic"]}
    bad = write_config(tmp_path, raw, "bad.yaml")
    res = subprocess.run([*cli, str(bad), "--overwrite"], capture_output=True, text=True)
    assert res.returncode != 0
    assert "heads.sentiment" in res.stderr and "heads.topic" in res.stderr


def test_multitask_resume_is_exact(tmp_path: Path) -> None:
    """Interrupted mid-epoch and resumed, a multi-task run ends with the weights of an
    uninterrupted one: the interleaved head order is replayed exactly."""
    from tailorml.recipes.finetune import finetune

    def cfg(name: str) -> Any:
        raw = mt_config(tmp_path, epochs=2, eval_every_steps=9, save_every_steps=9)
        raw["output_dir"] = str(tmp_path / name)
        raw["model"]["dropout"] = 0.1
        return load_config(write_config(tmp_path, raw, f"{name}.yaml"))

    full, part = cfg("full"), cfg("part")
    finetune(full)
    with pytest.raises(KeyboardInterrupt):
        finetune(part, stop_after_steps=13)
    finetune(part, resume=True)
    assert_same_weights(full.output_dir, part.output_dir)
