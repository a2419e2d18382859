"""End-to-end fine-tuning with tiny models: the run-folder contract, every task, resume, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tailorml.errors import ConfigError, DataError
from tailorml.recipes.finetune import finetune

from .conftest import (
    REPO,
    assert_same_weights,
    cfg_of,
    make_rows,
    tiny_config,
    write_config,
    write_csv,
    write_jsonl,
)

CLI = [sys.executable, "-m", "tailorml.cli"]


def test_classification_run_folder_contract(cls_config: dict[str, Any]) -> None:
    cfg = cfg_of(cls_config)
    results = finetune(cfg)
    out = Path(cfg.output_dir)
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "report.md", "data_summary.json"):
        assert (out / name).is_file(), name
    for name in ("config.json", "model.safetensors", "task.json", "tokenizer.json"):
        assert (out / "model" / name).is_file(), name
    assert list((out / "tb").iterdir()), "TensorBoard events written"
    for plot in ("loss.png", "eval_metrics.png", "confusion_matrix.png", "per_class.png"):
        assert (out / "plots" / plot).stat().st_size > 1000, plot
    saved = json.loads((out / "eval.json").read_text())
    assert set(saved) >= {"eval", "test"}
    test = saved["test"]
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix"} <= set(test)
    assert set(test["per_class"]) == {"negative", "neutral", "positive"}
    assert sum(map(sum, test["confusion_matrix"])) == 60
    # The keyword task is easy: a tiny model trained for a few epochs must clearly beat chance.
    assert results["test"]["accuracy"] > 0.8, results["test"]["accuracy"]
    task = json.loads((out / "model" / "task.json").read_text())
    assert (
        task["labels"] == ["negative", "neutral", "positive"] and task["task"] == "classification"
    )
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "train" and "samples_per_s" in r for r in rows)
    assert any(r["split"] == "eval" and "macro_f1" in r for r in rows)

    # The model loads with plain transformers and agrees with the saved labels.
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model"))
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}

    # An existing run folder is not silently overwritten.
    with pytest.raises(ConfigError, match="--resume"):
        finetune(cfg)


def test_multilabel_and_regression_and_pair(tmp_path: Path) -> None:
    rows = make_rows(150)
    ml = [
        {"text": r["text"], "label": r["label"] + (";any" if i % 2 else "")}
        for i, r in enumerate(rows)
    ]
    reg = [
        {
            "text": r["text"],
            "label": {"negative": -1.0, "neutral": 0.0, "positive": 1.0}[r["label"]],
        }
        for r in rows
    ]
    pair = [
        {"q": r["text"], "a": r["label"], "label": "yes" if i % 2 else "no"}
        for i, r in enumerate(rows)
    ]
    base = {"train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "seed": 0, "threads": 1}}
    cases = [
        ("multilabel", write_csv(tmp_path / "ml.csv", ml), {}, "micro_f1"),
        ("regression", write_jsonl(tmp_path / "reg.jsonl", reg), {}, "mse"),
        (
            "pair-classification",
            write_csv(tmp_path / "pair.csv", pair),
            {"text_column": "q", "text_pair_column": "a"},
            "accuracy",
        ),
    ]
    for task, path, extra, metric in cases:
        raw = tiny_config(
            tmp_path / task, data={"train": str(path), **extra}, task={"type": task}, **base
        )
        res = finetune(cfg_of(raw))
        assert metric in res["test"] and metric in res["eval"], task
        info = json.loads((tmp_path / task / "run" / "model" / "task.json").read_text())
        assert info["task"] == task
        if task == "regression":
            assert {"mse", "mae", "r2", "pearson"} <= set(res["test"])
            assert info["labels"] is None
        if task == "multilabel":
            assert info["labels"] == ["any", "negative", "neutral", "positive"]
            assert {"micro_f1", "macro_f1"} <= set(res["test"])


def test_early_stopping_and_best_checkpoint(cls_config: dict[str, Any]) -> None:
    # lr 0 can never improve after the first eval: patience 2 stops at the third evaluation.
    cls_config["train"].update(
        lr=1e-12, epochs=10, eval_every_steps=5, early_stopping_patience=2, metric_for_best="loss"
    )
    cfg = cfg_of(cls_config)
    res = finetune(cfg)
    assert res["train"]["stopped_by"] == "early stopping"
    assert res["train"]["steps"] < 10 * 15
    best = res["train"]["best_step"]
    assert best is not None and best < res["train"]["steps"]
    # the final evaluation scores the best checkpoint's weights (reloaded), not the last ones
    logged = (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in logged]
    at_best = [r for r in rows if r["split"] == "eval" and r["step"] == best]
    assert res["eval"]["loss"] == pytest.approx(at_best[0]["loss"], rel=1e-6)


def test_resume_is_exact(tmp_path: Path, cls_data: dict[str, Path]) -> None:
    """An interrupted + resumed run ends with the same weights as an uninterrupted one."""

    def raw(name: str) -> dict[str, Any]:
        r = tiny_config(
            tmp_path / name,
            data={
                "train": str(cls_data["train"]),
                "eval": str(cls_data["eval"]),
                "test": str(cls_data["test"]),
            },
            model={"base": "tiny", "dropout": 0.1},  # dropout on: RNG state must be restored too
        )
        r["train"].update(epochs=2, eval_every_steps=7, save_every_steps=7)
        return r

    full = cfg_of(raw("full"))
    finetune(full)
    part = cfg_of(raw("part"))
    with pytest.raises(KeyboardInterrupt):
        finetune(part, stop_after_steps=11)  # mid-epoch (15 steps per epoch), off the save grid
    ckpts = sorted(p.name for p in (Path(part.output_dir) / "checkpoints").iterdir())
    assert "step-11" in ckpts and not (Path(part.output_dir) / "eval.json").exists()
    finetune(part, resume=True)
    assert_same_weights(full.output_dir, part.output_dir)
    steps = [
        json.loads(x)["step"]
        for x in (Path(part.output_dir) / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["split"] == "train"
    ]
    assert steps == sorted(set(steps)), "no step is logged twice after resume"


def test_sigterm_saves_a_checkpoint_and_resume_finishes(
    tmp_path: Path, cls_data: dict[str, Path]
) -> None:
    big = write_csv(tmp_path / "big.csv", make_rows(3000))
    raw = tiny_config(
        tmp_path,
        data={"train": str(big), "eval": str(cls_data["eval"]), "test": str(cls_data["test"])},
    )
    raw["train"].update(epochs=3, log_every_steps=1)
    path = write_config(tmp_path, raw)
    proc = subprocess.Popen(
        [*CLI, "finetune", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.exists() and metrics.read_text().count("\n") >= 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "checkpoint saved" in out
    ckpts = list((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert ckpts and not (tmp_path / "run" / "eval.json").exists()
    res = subprocess.run(
        [*CLI, "finetune", str(path), "--resume", "train.max_steps=40"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Resumed from" in res.stderr
    assert (tmp_path / "run" / "eval.json").is_file()


@pytest.mark.parametrize(
    "breakage,expect",
    [
        (lambda d: d["data"].update(train="missing.csv"), "file not found"),
        (lambda d: d["data"].update(text_column="txt"), "Did you mean 'text'"),
        (lambda d: d["model"].update(base="/no/such/folder"), "neither a known name"),
        (lambda d: d["train"].update(metric_for_best="bleu"), "metric_for_best"),
    ],
)
def test_bad_input_leaves_no_run(cls_config: dict[str, Any], breakage: Any, expect: str) -> None:
    breakage(cls_config)
    with pytest.raises((ConfigError, DataError), match=expect):
        finetune(cfg_of(cls_config))
    assert not Path(cls_config["output_dir"]).exists()


def test_resume_with_nothing_to_resume_is_an_error_unless_asked(
    tmp_path: Path, cls_config: dict[str, Any]
) -> None:
    from typer.testing import CliRunner

    from tailorml.cli import app

    cls_config["train"].update(max_steps=3)
    path = write_config(tmp_path, cls_config)
    res = CliRunner().invoke(app, ["finetune", str(path), "--resume"])
    assert res.exit_code == 2 and "no checkpoint" in res.output, res.output
    assert "--resume-or-start" in res.output
    assert not (tmp_path / "run" / "model").exists()
    res = CliRunner().invoke(app, ["finetune", str(path), "--resume-or-start"])
    assert res.exit_code == 0, res.output[-2000:]
    assert "starting from the beginning" in res.output
    assert (tmp_path / "run" / "eval.json").is_file()


def test_empty_data_and_cli_exit_code(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("text,label\n")
    raw = tiny_config(tmp_path, data={"train": str(tmp_path / "e.csv")})
    path = write_config(tmp_path, raw)
    res = subprocess.run([*CLI, "finetune", str(path)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2
    assert "no data rows" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()
    (tmp_path / "bad.yaml").write_text("train: {lr: [1,\n")
    res = subprocess.run(
        [*CLI, "finetune", str(tmp_path / "bad.yaml")], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 2 and "not valid YAML" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run(
        [*CLI, "finetune", str(path), "train.lrr=1"], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 2 and "Did you mean `train.lr`" in res.stderr


def test_evaluate_and_predict_cli(
    cls_config: dict[str, Any], cls_data: dict[str, Path], tmp_path: Path
) -> None:
    cfg = cfg_of(cls_config)
    finetune(cfg)
    run = str(cfg.output_dir)
    from typer.testing import CliRunner

    from tailorml.cli import app

    # In-process where a child process adds nothing; the stdin case below runs the real command.
    res = CliRunner().invoke(
        app,
        ["evaluate", run, "--data", str(cls_data["test"]), "--output", str(tmp_path / "m.json")],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    saved = json.loads((Path(run) / "eval.json").read_text())["test"]
    assert m["accuracy"] == pytest.approx(saved["accuracy"]) and m["n"] == 60
    res = subprocess.run(
        [*CLI, "predict", run, "--input", "-", "--top-k", "2"],
        cwd=REPO,
        input="great strong rally today\nterrible crash and loss\n",
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    preds = [json.loads(x) for x in res.stdout.splitlines()]
    assert [p["input"] for p in preds] == ["great strong rally today", "terrible crash and loss"]
    assert all(len(p["top_k"]) == 2 and 0 <= p["score"] <= 1 for p in preds)
    assert preds[0]["label"] == "positive" and preds[1]["label"] == "negative"
    out = tmp_path / "p.jsonl"
    res2 = CliRunner().invoke(
        app, ["predict", run, "--input", str(cls_data["test"]), "-o", str(out)]
    )
    assert res2.exit_code == 0 and len(out.read_text().splitlines()) == 60
    # Plain text, one per line (.txt), is accepted; a table without the text column says how.
    (tmp_path / "in.txt").write_text("great strong rally today\n\nterrible crash and loss\n")
    out_txt = tmp_path / "txt.jsonl"
    res2 = CliRunner().invoke(
        app, ["predict", run, "--input", str(tmp_path / "in.txt"), "-o", str(out_txt)]
    )
    assert res2.exit_code == 0, res2.output
    labels = [json.loads(x)["label"] for x in out_txt.read_text().splitlines()]
    assert labels == ["positive", "negative"]
    (tmp_path / "noheader.csv").write_text("great strong rally today\nterrible crash\n")
    res2 = CliRunner().invoke(app, ["predict", run, "--input", str(tmp_path / "noheader.csv")])
    assert res2.exit_code == 2 and "--text-column" in res2.output and ".txt" in res2.output
    res2 = CliRunner().invoke(app, ["evaluate", str(tmp_path), "--data", str(cls_data["test"])])
    assert res2.exit_code == 2 and "not a finished tailorml run" in res2.output


def test_load_predictor_matches_the_trained_model(cls_config: dict[str, Any]) -> None:
    """predictors.load_predictor (no training code) gives the logits of the saved model."""
    import numpy as np
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tailorml.predictors import load_predictor

    cfg = cfg_of(cls_config)
    finetune(cfg)
    folder = Path(cfg.output_dir) / "model"
    pred = load_predictor(Path(cfg.output_dir))
    texts = ["great rally today", "the quarter shares terrible crash", "notes"]
    got = pred.predict(texts)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    with torch.inference_mode():
        want = model(**tok(texts, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    formatted = pred.format(got, top_k=2)
    assert [f["label"] for f in formatted] == [
        model.config.id2label[int(i)] for i in want.argmax(-1)
    ]


def test_gradient_accumulation_matches_one_big_batch(
    tmp_path: Path, cls_data: dict[str, Path]
) -> None:
    """batch_size is per optimizer step: 2 micro-batches of 8 make the same update as one of 16."""
    weights = []
    for accum in (1, 2):
        raw = tiny_config(tmp_path / f"acc{accum}", data={k: str(v) for k, v in cls_data.items()})
        raw["train"].update(max_steps=6, grad_accum_steps=accum, eval_every_steps=6)
        finetune(cfg_of(raw))
        weights.append(
            load_file(str(tmp_path / f"acc{accum}" / "run" / "model" / "model.safetensors"))
        )
    a, b = weights
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst


def test_runs_of_different_precision_in_one_process(
    tmp_path: Path, cls_data: dict[str, Path]
) -> None:
    """A bf16 run then an fp32 run in one process (a notebook, a study): accelerate keeps one
    state per process and used to refuse the second precision."""
    for n, precision in enumerate(("bf16", "fp32", "bf16")):
        raw = tiny_config(tmp_path / str(n), data={k: str(v) for k, v in cls_data.items()})
        raw["train"].update(max_steps=2, eval_every_steps=2, precision=precision)
        res = finetune(cfg_of(raw))
        assert res["train"]["steps"] == 2
        saved = yaml.safe_load((tmp_path / str(n) / "run" / "config.yaml").read_text())
        assert saved["train"]["precision"] == precision


def test_left_out_settings_are_chosen_from_data_and_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config that names only data and model trains with chosen lr, epoch budget, early
    stopping and warmup; each choice is printed, kept in auto.json, and config.yaml holds the
    values used. Keys the config sets win."""
    from tailorml.config.schema import TrainConfig
    from tailorml.train import auto

    t, chosen = auto.resolve(TrainConfig(), steps_per_epoch=313, hidden=384)
    assert (t.lr, t.epochs, t.early_stopping_patience, t.warmup_ratio) == (1e-4, 10.0, 2, 0.06)
    assert set(chosen) == {
        "train.lr",
        "train.epochs",
        "train.early_stopping_patience",
        "train.warmup_ratio",
    }
    big, _ = auto.resolve(TrainConfig(), steps_per_epoch=3125, hidden=768)
    assert (big.lr, big.epochs, big.eval_every_steps) == (5e-5, 3.0, 447)
    small, _ = auto.resolve(TrainConfig(), steps_per_epoch=10, hidden=1024)
    assert (small.lr, small.epochs) == (2e-5, 40.0)
    mine, chosen = auto.resolve(
        TrainConfig(lr=3e-4, epochs=2, warmup_steps=5), steps_per_epoch=50, hidden=384
    )
    assert (mine.lr, mine.epochs, mine.warmup_steps, mine.early_stopping_patience) == (
        3e-4,
        2.0,
        5,
        None,
    )
    assert chosen == {}
    # precision: bf16 where the hardware computes it natively, fp32 on other CPUs
    assert auto.choose_precision("auto", cuda=True) == ("bf16", "a CUDA device (bf16 autocast)")
    assert auto.choose_precision("auto", False, {"avx2", "amx_bf16"})[0] == "bf16"
    assert auto.choose_precision("auto", False, {"avx2", "avx512_bf16"})[0] == "bf16"
    assert auto.choose_precision("auto", False, {"avx2", "avx512f"})[0] == "fp32"
    assert auto.choose_precision("fp32", True) == ("fp32", "set in the config")

    train = write_csv(tmp_path / "t.csv", make_rows(96, 0))
    raw = tiny_config(tmp_path, data={"train": str(train)}, train={"epochs": 2})
    raw["train"].pop("lr")
    raw["train"].pop("precision")  # left to `auto`, as a user's config would
    finetune(cfg_of(raw))
    out = tmp_path / "run"
    picked = json.loads((out / "auto.json").read_text())
    assert set(picked) == {
        "train.lr",
        "train.warmup_ratio",
        "train.precision",
        "model.pooling",
        "train.contrastive",
    }
    assert picked["train.contrastive"]["value"] is False  # the config sets train.epochs
    assert picked["train.lr"]["value"] == 1e-4
    assert picked["model.pooling"]["value"] == "cls"  # the random tiny base is no sentence encoder
    native = bool(auto.env.cpu_flags() & {"amx_bf16", "avx512_bf16"})
    assert picked["train.precision"]["value"] == ("bf16" if native else "fp32")
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert saved["lr"] == 1e-4 and saved["epochs"] == 2 and saved["warmup_ratio"] == 0.06
    err = capsys.readouterr().err
    assert "train.lr = 0.0001 (chosen: encoder hidden size 32)" in err, err[-2000:]
    for split in ("train", "eval", "test"):  # the class balance of every split is printed
        assert f"class balance ({split}): negative:" in err


def test_final_eval_reuses_the_last_evaluation_only_when_it_scored_the_best_weights() -> None:
    from tailorml.train.loop import EvalMemo

    calls: list[int] = []
    state: dict[str, Any] = {"global_step": 0, "best_step": None}

    def evaluate() -> dict[str, Any]:
        calls.append(state["global_step"])
        return {"loss": float(state["global_step"])}

    memo = EvalMemo(evaluate, state)
    assert memo.final() == {"loss": 0.0} and calls == [0]  # never evaluated: a fresh one
    state.update(global_step=10)
    memo()
    state.update(best_step=10)
    assert memo.final() == {"loss": 10.0} and calls == [0, 10]  # reused: no third pass
    state.update(global_step=20)
    memo()  # step 20 scored worse: the best (step 10) weights are reloaded and evaluated again
    assert memo.final() == {"loss": 20.0} and calls == [0, 10, 20, 20]
