"""Hostile but realistic input to the CLI (issue 16): every case ends in a clear error naming
the problem and the fix (exit code 2, no traceback) and leaves nothing half-written."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tailorml.config.load import validate_mapping
from tailorml.errors import ConfigError, DataError

from .conftest import REPO, tiny_config, write_csv

CLI = [sys.executable, "-m", "tailorml.cli"]


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*CLI, *args], cwd=REPO, capture_output=True, input=stdin)
    return subprocess.CompletedProcess(
        res.args,
        res.returncode,
        res.stdout.decode(errors="replace"),
        res.stderr.decode("utf-8", "replace"),
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tailorml.recipes.finetune import finetune

    from .conftest import make_rows

    tmp = tmp_path_factory.mktemp("hostile")
    data = {k: str(write_csv(tmp / f"{k}.csv", make_rows(n, s))) for k, n, s in
            (("train", 120, 0), ("eval", 30, 1), ("test", 30, 2))}  # fmt: skip
    raw = tiny_config(tmp, data=data, train={"max_steps": 12, "save_every_steps": 4, "threads": 1})
    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, stop_after_steps=10)  # leaves step-4, step-8 and step-10 checkpoints
    return Path(cfg.output_dir)


def _ok(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    assert "Traceback" not in res.stderr, res.stderr[-1500:]
    for n in needles:
        assert n in res.stderr, (n, res.stderr[-1500:])


def test_damaged_checkpoints_are_named_and_skipped(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tailorml.config.load import load_config
    from tailorml.recipes.finetune import finetune

    work = tmp_path / "run"
    shutil.copytree(run, work)
    ckpts = work / "checkpoints"
    assert {"step-8", "step-10"} <= {p.name for p in ckpts.iterdir()}
    weights = ckpts / "step-10" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: a crash while copying
    cfg = load_config(work / "config.yaml", [f"output_dir={work}"])
    res = finetune(cfg, resume=True)
    err = capsys.readouterr().err
    assert "step-10 is damaged" in err and "Resumed from" in err and "step-8" in err, err
    assert res["train"]["steps"] == 12
    # Every checkpoint damaged: an error naming each, never a silent restart.
    shutil.rmtree(work)
    shutil.copytree(run, work)
    for p in (work / "checkpoints").glob("step-*/optimizer.pt"):
        p.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"no checkpoint .* can be read: step-10 \(.*step-8"):
        finetune(load_config(work / "config.yaml", [f"output_dir={work}"]), resume=True)


@pytest.fixture(scope="module")
def model(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished model folder: the run resumed to its end."""
    from tailorml.config.load import load_config
    from tailorml.recipes.finetune import finetune

    done = tmp_path_factory.mktemp("done") / "run"
    shutil.copytree(run, done)
    finetune(load_config(done / "config.yaml", [f"output_dir={done}"]), resume=True)
    return done / "model"


def test_predict_refuses_undecodable_input_and_bad_output_paths(
    model: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good text here\n\xff\xfe bad bytes\n")
    _ok(_cli("predict", str(model), "--input", str(bad)), "bad.txt:2:", "UTF-8")
    _ok(_cli("predict", str(model), "--input", "-", stdin=b"fine\n\xc3\x28 broken\n"), "stdin:2:")
    table = tmp_path / "bad.csv"
    table.write_bytes(b"text\nok\nlatin1 \xe9t\xe9\n")
    _ok(_cli("predict", str(model), "--input", str(table)), "bad.csv:3:", "UTF-8")
    good = tmp_path / "in.txt"
    good.write_text("great strong rally\n")
    _ok(_cli("predict", str(model), "--input", str(good), "-o", str(tmp_path)), "is a folder")
    _ok(
        _cli("predict", str(model), "--input", str(good), "-o", str(tmp_path / "no" / "p.jsonl")),
        "does not exist",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "bad.txt", "in.txt"]
    out = tmp_path / "p.jsonl"
    res = _cli("predict", str(model), "--input", str(good), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["input"] == "great strong rally"


def test_labels_outside_label_names_are_bad_rows_in_training(tmp_path: Path) -> None:
    from tailorml.recipes.finetune import finetune

    rows: list[dict[str, Any]] = [{"text": f"text {i}", "label": i % 3} for i in range(30)]
    rows += [{"text": "minus", "label": -1}, {"text": "half", "label": 1.5}]
    rows += [{"text": "huge", "label": "12345678901234567890"}]
    train = write_csv(tmp_path / "t.csv", rows)
    raw = tiny_config(tmp_path, data={"train": str(train), "label_names": ["a", "b", "c"]})
    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    with pytest.raises(DataError) as err:
        finetune(cfg)
    text = str(err.value)
    for line, label in ((32, "-1"), (33, "1.5"), (34, "12345678901234567890")):
        assert f"t.csv:{line}: label '{label}' is not one of data.label_names" in text, text
    assert not (tmp_path / "run").exists()


def test_a_pickle_in_a_model_folder_is_refused_with_a_reason(model: Path, tmp_path: Path) -> None:
    """A folder whose weights are a general pickle (it would run code) is refused by the loader,
    by `tailor predict` and by `tailor serve`, with the reason; the code never runs."""
    from tailorml.predictors import load_predictor

    folder = tmp_path / "evil"
    shutil.copytree(model, folder)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    (folder / "model_int8.pt").write_bytes(pickle.dumps(Evil()))
    info = json.loads((folder / "task.json").read_text())
    info.update(torch_dynamic_int8=True, torch_int8_state="model_int8.pt", runtime="torch")
    (folder / "task.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="refused to load a file that is a general pickle"):
        load_predictor(folder)
    from typer.testing import CliRunner

    from tailorml.cli import app

    res_in = CliRunner().invoke(app, ["predict", str(folder), "--input", "-"], input="x\n")
    assert res_in.exit_code == 2 and "general pickle" in res_in.output, res_in.output[-1500:]
    assert "Traceback" not in res_in.output
    res = subprocess.run(
        [*CLI, "serve", str(folder), "--port", "0"], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert res.returncode != 0 and "general pickle" in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr, (res.stdout + res.stderr)[-1500:]
    assert not marker.exists()
