"""`tailor tune`: a study of fine-tuning trials on Optuna with tiny models — outputs, pruning,
resuming, bad input caught before any trial, and two workers sharing one study through a real
PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tailorml.config.load import load_config
from tailorml.errors import ConfigError
from tailorml.train.checkpoint import list_checkpoints

from .conftest import REPO, make_rows, tiny_config, write_config, write_csv
from .finwatch_services import postgres  # noqa: F401

CLI = [sys.executable, "-m", "tailorml.cli"]
SPACE = {
    "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "train.batch_size": {"choices": [16, 32]},
}


def study_config(tmp: Path, **tune: Any) -> dict[str, Any]:
    data = {
        k: str(write_csv(tmp / f"{k}.csv", make_rows(n, s)))
        for k, n, s in (("train", 96, 0), ("eval", 30, 1), ("test", 30, 2))
    }
    raw = tiny_config(tmp, data=data, train={"epochs": 3, "threads": 1})
    raw["name"] = "study"
    raw["output_dir"] = str(tmp / "study")
    raw["tune"] = {"space": SPACE, "trials": 4, **tune}
    return raw


def test_study_writes_trials_best_and_report_and_resumes(tmp_path: Path) -> None:
    from tailorml.tune.study import tune

    cfg = load_config(write_config(tmp_path, study_config(tmp_path)))
    first = tune(cfg, trials=2)
    assert first["finished"] + first["pruned"] == 2
    stamp = (tmp_path / "study" / "trial-000" / "eval.json").stat().st_mtime_ns
    res = tune(cfg)  # resumes: two more trials, the first two are not run again
    assert res["finished"] + res["pruned"] == 4 and res["failed"] == 0
    assert (tmp_path / "study" / "trial-000" / "eval.json").stat().st_mtime_ns == stamp
    assert [t["number"] for t in res["trials"]] == [0, 1, 2, 3]
    # the resumed half draws new values (one random stream per process used to repeat trial 0's)
    drawn = [tuple(sorted(t["params"].items())) for t in res["trials"]]
    assert len(set(drawn)) == 4, drawn
    study = tmp_path / "study"
    for t in res["trials"]:
        assert {"train.lr", "train.batch_size"} == set(t["params"])
        assert 1e-4 <= t["params"]["train.lr"] <= 1e-2 and t["params"]["train.batch_size"] in (
            16,
            32,
        )
        assert (Path(t["run_dir"]) / "config.yaml").is_file()
    import optuna

    # Every trial reports at hundredths of an epoch, whatever its batch size (16: 6 steps an
    # epoch, 32: 3), so the pruner compares trials after the same share of the data.
    stored = optuna.load_study(study_name="study", storage=f"sqlite:///{study}/study.db").trials
    assert {t.params["train.batch_size"] for t in stored} == {16, 32}  # seed 0 draws both
    for t in stored:
        assert set(t.intermediate_values) <= {100, 200, 300} and 100 in t.intermediate_values
    best = res["best"]
    assert best is not None and best["state"] == "complete"
    values = [t["value"] for t in res["trials"] if t["state"] == "complete"]
    assert best["value"] == max(values)  # accuracy: maximize
    assert "accuracy" in best["test"]  # reported, not used for the choice
    best_cfg = yaml.safe_load((study / "best.yaml").read_text())
    assert best_cfg["output_dir"] == str(study / "best") and "tune" not in best_cfg
    assert best_cfg["train"]["lr"] == pytest.approx(best["params"]["train.lr"])
    load_config(study / "best.yaml")  # trains as it is
    report = (study / "report.md").read_text()
    assert "best: trial" in report and "| trial | state | value | seconds |" in report
    for t in res["trials"]:  # values to 4 significant digits, as a person reads them
        assert f" | {t['params']['train.lr']:.4g} |" in report
    rows = [line.split(" | ")[4:] for line in report.splitlines() if line[2:3].isdigit()]
    assert len(rows) == 4 and all(
        len(cell.split("e")[0].replace(".", "").strip(" |").lstrip("0")) <= 4
        for row in rows
        for cell in row
    ), rows
    assert (study / "plots" / "history.png").stat().st_size > 1000
    assert json.loads((study / "study.json").read_text())["metric"] == "eval accuracy"


def test_bad_studies_are_refused_before_any_trial(tmp_path: Path) -> None:
    from tailorml.tune.study import tune

    raw = study_config(tmp_path)
    raw["tune"]["space"] = {
        "train.lrr": {"low": 1e-4, "high": 1e-3},
        "train.epochs": {"low": 3, "high": 3},
        "model.dropout": {"choices": []},
        "train.warmup_ratio": {"low": 0.0, "high": 0.2, "log": True},
        "train.batch_size": {"choices": [16, "big"]},  # the second choice is checked too
        "output_dir": {"choices": ["a", "b"]},
        "train.weight_decay": {"low": 0.0, "high": 0.1, "step": -0.01},
    }
    raw["tune"]["metric"] = "bleu"
    with pytest.raises(ConfigError) as err:
        tune(load_config(write_config(tmp_path, raw)))
    text = str(err.value)
    assert "`tune.space.train.lrr`" in text and "Did you mean `train.lr`" in text, text
    assert "low (3) must be below high (3)" in text
    assert "`choices` is empty" in text and "log range needs low > 0" in text
    assert "`tune.metric` = 'bleu' is not reported" in text
    assert "`train.batch_size` = 'big': Input should be a valid integer" in text
    assert "`tune.space.output_dir`: the study sets this itself" in text
    assert "`step` must be above 0" in text
    raw = study_config(tmp_path, direction="minimize")
    with pytest.raises(ConfigError, match="better when higher"):
        tune(load_config(write_config(tmp_path, raw)))
    raw = study_config(tmp_path, storage="postgresql+psycopg://nobody@127.0.0.1:9/none")
    with pytest.raises(ConfigError, match="cannot be opened"):
        tune(load_config(write_config(tmp_path, raw)))
    assert not (tmp_path / "study").exists()  # nothing written: not even the study folder
    # The budget flags are checked like the keys they override (`--trials 0` once ran the
    # config's 20 trials).
    path = write_config(tmp_path, study_config(tmp_path))
    for flag, shown in (("--trials=0", "`tune.trials` = 0"), ("--timeout=-5", "`tune.timeout_s`")):
        done = subprocess.run([*CLI, "tune", str(path), flag], capture_output=True, text=True)
        assert done.returncode == 2 and shown in done.stderr, (flag, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "study").exists()


def tune_child(path: Path, stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """`tailor tune CONFIG` as a child process, its output piped."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(
        [*CLI, "tune", str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


@pytest.mark.slow  # a PostgreSQL server and two worker processes (~20 s)
def test_two_workers_share_one_study_on_postgresql(tmp_path: Path, postgres: Any) -> None:  # noqa: F811
    url = postgres.fresh_db("tune_shared")
    path = write_config(tmp_path, study_config(tmp_path, storage=url, trials=4))
    workers = [tune_child(path) for _ in range(2)]
    outs = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err[-2000:]
    import optuna

    study = optuna.load_study(study_name="study", storage=url)
    done = [t for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"]
    # Optuna's trial cap is approximate across workers: both may start the last trial.
    assert 4 <= len(done) <= 5, [t.state for t in study.trials]
    ran = [err.count("trial ") for _, err in outs]
    assert all(n >= 1 for n in ran), ran  # both workers took trials
    assert len({t.number for t in study.trials}) == len(study.trials)
    drawn = [t.params["train.lr"] for t in study.trials]
    assert len(set(drawn)) == len(drawn), drawn  # two workers, one seed: no value drawn twice


def _interrupt_first_trial(tmp_path: Path, sig: signal.Signals) -> tuple[Path, str]:
    """`tailor tune` in a child process, stopped by `sig` once trial 0 has a checkpoint."""
    raw = study_config(tmp_path, trials=2, heartbeat_s=1, pruner="none")
    raw["train"].update(epochs=60, save_every_steps=5)
    path = write_config(tmp_path, raw)
    ckpts = tmp_path / "study" / "trial-000" / "checkpoints"
    child = tune_child(path, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (ckpts.is_dir() and list_checkpoints(ckpts)):  # a whole one, not step-N.tmp
        assert child.poll() is None, child.communicate()[0][-2000:]
        assert time.monotonic() < deadline, "no checkpoint of trial 0 in time"
        time.sleep(0.05)
    child.send_signal(sig)
    out = child.communicate(timeout=120)[0]
    assert not (tmp_path / "study" / "trial-000" / "eval.json").exists(), out[-2000:]
    return path, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_an_interrupted_trial_continues_from_its_checkpoint(
    tmp_path: Path, sig: signal.Signals, capsys: pytest.CaptureFixture[str]
) -> None:
    from tailorml.tune.study import tune

    path, out = _interrupt_first_trial(tmp_path, sig)
    if sig == signal.SIGINT:
        assert "Interrupted at step" in out  # the loop saved a checkpoint on the signal
        assert "the same `tailor tune` command continues it" in out
    else:
        # the killed worker's heartbeat (every 1 s) is stale after 3 s; SQLite keeps whole seconds
        time.sleep(5.0)
    cfg = load_config(path)
    if sig == signal.SIGINT:  # two workers restarting at once both queue the interrupted trial
        from tailorml.tune.study import open_study, requeue

        study = open_study(cfg, "maximize", None)
        for _ in range(2):
            requeue(study, study.trials[0])
    capsys.readouterr()
    res = tune(cfg)
    said = capsys.readouterr().err  # the console writes to stderr
    assert "trial 1: continues trial 0 (trial-000)" in said and "Resumed from" in said, said
    trials = res["trials"]
    first, rerun, new = trials[0], trials[1], trials[-1]
    assert first["state"] == "fail" and rerun["continues"] == 0
    assert rerun["state"] == "complete" and rerun["params"] == first["params"]
    assert rerun["run_dir"] == first["run_dir"] == str(tmp_path / "study" / "trial-000")
    assert (tmp_path / "study" / "trial-000" / "eval.json").is_file()
    if sig == signal.SIGINT:  # the second copy stepped aside: failed, not counted, no folder
        assert trials[2]["state"] == "fail" and trials[2]["continues"] == 0
        copy = open_study(cfg, "maximize", None).trials[2]
        assert copy.user_attrs.get("stepped_aside_for") == 1, copy.user_attrs
    # the study still counts two finished trials: the rerun and one new trial in its own folder
    assert res["finished"] + res["pruned"] == 2 and new["continues"] is None
    assert new["run_dir"] == str(tmp_path / "study" / f"trial-{new['number']:03d}")
    assert len(trials) == (4 if sig == signal.SIGINT else 3)
    assert "complete (continues 0)" in (tmp_path / "study" / "report.md").read_text()


def test_median_pruner_waits_for_five_trials_and_two_and_a_half_epochs() -> None:
    """A slow start is not judged: nothing is pruned before 5 trials finished, nor at a trial's
    first two epochs (reports at 100 and 200); at 300, below the median, it is."""
    import optuna

    from tailorml.tune.study import _pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=_pruner("median"))

    def finished(value: float) -> None:
        t = study.ask()
        for at in (100, 200, 300):
            t.report(value, at)
        study.tell(t, value)

    for i in range(4):
        finished(0.8 + 0.01 * i)
    early = study.ask()
    early.report(0.1, 300)
    assert not early.should_prune()  # 4 finished trials: too few to judge by
    study.tell(early, 0.1)
    finished(0.85)
    slow = study.ask()
    for at in (100, 200):
        slow.report(0.1, at)
        assert not slow.should_prune()  # under 2.5 epochs in
    slow.report(0.1, 300)
    assert slow.should_prune()
    good = study.ask()
    good.report(0.9, 300)
    assert not good.should_prune()  # above the median


def _family_config(tmp: Path, family: str) -> dict[str, Any]:
    """A tiny run config of another model family than the classifier: a causal LM trained on
    prompt/response rows, or a small CNN on generated images."""
    from .conftest import write_jsonl

    if family == "generation":
        rows = [{"prompt": f"Say {w}.", "response": f"{w.capitalize()}!"} for w in ("yes", "no")]
        train = write_jsonl(tmp / "train.jsonl", rows * 8)
        data = {"prompt_column": "prompt", "response_column": "response", "max_length": 64}
        data |= {"train": str(train), "eval": str(train), "test": str(train)}
        raw = tiny_config(tmp, task={"type": "generation"}, model={"tiny_hidden_size": 32})
        raw["data"] = data
        raw["generate"] = {"samples": 2, "max_new_tokens": 4}
    else:
        from tailorml.data.images import write_npz
        from tailorml.tasks.images import example_images

        npz = write_npz(tmp / "t.npz", *example_images(64, 0))
        raw = tiny_config(tmp, task={"type": "image-classification"})
        raw["data"] = {"train": str(npz)}
        raw["model"] = {"base": "cnn", "widths": [8, 16]}
    raw["model"].pop("dropout", None)
    raw["train"] |= {"max_steps": 6, "eval_every_steps": 3, "batch_size": 8}
    raw["name"] = "study"
    raw["output_dir"] = str(tmp / "study")
    raw["tune"] = {"space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}, "trials": 2}
    return raw


@pytest.mark.parametrize("family", ["generation", "image-classification"])
def test_a_study_trains_each_model_family_with_its_own_recipe(tmp_path: Path, family: str) -> None:
    """Trials of a generation or an image config run the recipe of that family (sft, images),
    and select on that task's own metric: eval loss (lower is better) for a causal LM,
    accuracy for images."""
    from tailorml.tune.study import tune

    res = tune(load_config(write_config(tmp_path, _family_config(tmp_path, family))))
    assert res["finished"] == 2 and res["failed"] == 0, res
    assert res["metric"] == ("eval loss" if family == "generation" else "eval accuracy")
    lrs = {t["params"]["train.lr"] for t in res["trials"]}
    assert len(lrs) == 2 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    values = [t["value"] for t in res["trials"]]
    pick = min if family == "generation" else max
    assert res["best"]["value"] == pick(values)
    for t in res["trials"]:
        ran = yaml.safe_load((Path(t["run_dir"]) / "config.yaml").read_text())
        assert ran["task"]["type"] == family and ran["train"]["lr"] == pytest.approx(
            t["params"]["train.lr"]
        )
        assert (Path(t["run_dir"]) / "model").is_dir()


def test_lora_rank_is_searched_from_a_config_without_lora(tmp_path: Path) -> None:
    """`model.lora.r` in the space of a config that leaves `model.lora` out: each trial trains
    LoRA adapters of the sampled rank (the override starts the section); a pretraining config
    is refused with what to tune instead."""
    from tailorml.tune.study import check_study, trial_config

    raw = study_config(tmp_path)
    raw["tune"]["space"] = {"model.lora.r": {"choices": [4, 8]}}
    cfg = load_config(write_config(tmp_path, raw))
    assert cfg.model.lora is None and check_study(cfg) == ("accuracy", "maximize")
    trial = trial_config(cfg, {"model.lora.r": 4}, tmp_path / "study" / "trial-000", "accuracy")
    assert trial.model.lora is not None and trial.model.lora.r == 4
    from tailorml.config.schema import PretrainConfig

    pretraining = cfg.model_copy(update={"pretrain": PretrainConfig(objective="mlm")})
    with pytest.raises(ConfigError, match="`tailor tune` searches fine-tuning runs"):
        check_study(pretraining)
