from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tailorml.config.load import apply_overrides, load_config, schema_lines, validate_mapping
from tailorml.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tailorml.cli"]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_config_parses(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    if "finwatch" in raw or raw.get("kind"):  # app configs are parsed by their own tests
        pytest.skip("not a run config")
    cfg = load_config(path)
    if cfg.pretrain is not None:  # a pretraining config names its corpus, not data files
        from tailorml.data.corpus import expand_corpus

        assert cfg.data.train is None
        entries = [e if isinstance(e, str) else e.path for e in cfg.pretrain.corpus]
        assert all((REPO / e).is_file() for e in entries), f"{path.name} names missing files"
        assert expand_corpus([str(REPO / e) for e in entries])
        return
    for name, view in cfg.head_views().items():  # one view, or one per head (multi-task)
        for split in ("train", "eval", "test"):
            file = getattr(view.data, split)
            assert split != "train" or file is not None, f"{path.name} {name}: no train file"
            if file is not None and not (REPO / file).is_file():
                # Data fetched by a set-up step (not in the repository, e.g. Fashion-MNIST):
                # the config must say how to get that folder.
                assert (
                    "Set-up" in path.read_text() and str(Path(file).parent) in path.read_text()
                ), f"{path.name} names missing {file}"


def test_overrides_are_typed() -> None:
    raw = apply_overrides(
        {"train": {"lr": 1e-4}}, ["train.lr=3e-5", "train.max_steps=7", "data.eval=null"]
    )
    assert raw["train"]["lr"] == pytest.approx(3e-5)
    assert raw["train"]["max_steps"] == 7
    assert raw["data"]["eval"] is None


def test_every_problem_is_reported_at_once() -> None:
    raw = {
        "data": {"train": "x.csv", "txt_column": "t"},
        "train": {"warmup_steps": 10, "warmup_ratio": 0.1, "lr": -1},
    }
    cfg, problems = validate_mapping(raw)
    assert cfg is None
    text = "\n".join(problems)
    assert "Unknown key `data.txt_column`" in text and "data.text_column" in text
    assert "Both `train.warmup_steps` and `train.warmup_ratio` are set. Choose one." in text
    assert "train.lr" in text
    assert len(problems) == 3


def test_pair_task_needs_pair_column() -> None:
    _, problems = validate_mapping(
        {"data": {"train": "x"}, "task": {"type": "pair-classification"}}
    )
    assert any("text_pair_column" in p for p in problems)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: a.csv\n   eval: [oops\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "not valid YAML" in str(err.value) and "line" in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_schema_lists_every_required_key() -> None:
    keys = {row[0] for row in schema_lines()}
    for key in (
        "data.train",
        "data.eval",
        "data.test",
        "data.text_column",
        "data.text_pair_column",
        "data.label_column",
        "model.base",
        "task.type",
        "train.epochs",
        "train.max_steps",
        "train.batch_size",
        "train.lr",
        "train.seed",
        "output_dir",
    ):
        assert key in keys
    assert all(row[3] for row in schema_lines()), "every field needs a one-line doc"


def test_cli_validate_and_schema(tmp_path: Path, cls_data: dict[str, Path]) -> None:
    cfg = {
        "data": {"train": str(cls_data["train"]), "text_column": "txt", "labl_column": "x"},
        "model": {"base": str(tmp_path / "no-such-model")},
        "train": {"warmup_steps": 1, "warmup_ratio": 0.1},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*CLI, "validate", str(path)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2
    assert "labl_column" in res.stderr and "Choose one" in res.stderr
    # Once the keys are right, file-level checks run too: missing column (with a suggestion)
    # and a model.base that is neither a name nor a folder.
    cfg["data"].pop("labl_column")
    cfg["train"].pop("warmup_ratio")
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*CLI, "validate", str(path)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2
    assert "'txt'" in res.stderr and "Did you mean 'text'" in res.stderr
    assert "neither a known name" in res.stderr
    res = subprocess.run([*CLI, "config", "schema"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and "train.warmup_ratio" in res.stdout


def test_validate_reports_everything_at_once_and_runs_the_row_checks(tmp_path: Path) -> None:
    """An unknown key does not hide a missing file; bad rows, every head's files and
    metric_for_best are checked without training (issue: validate said OK, finetune stopped)."""
    train = tmp_path / "train.csv"
    train.write_bytes(
        b"text,label\ngood text,pos\n,neg\nno label here,\nbad \xff bytes,pos\nfine,neg\n"
    )
    ev = tmp_path / "eval.csv"
    ev.write_text("text,label\nsome text,never_seen\nok,pos\n")
    cfg = {
        "data": {"train": str(train), "eval": str(ev)},
        "model": {"base": "tiny"},
        "train": {"lrr": 1, "metric_for_best": "bleu"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*CLI, "validate", str(path)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2, res.stderr
    out = res.stderr
    assert "Did you mean `train.lr`" in out  # the unknown key...
    assert f"{train}:3: empty text" in out  # ...does not hide the rows' problems
    assert f"{train}:4: missing label" in out
    assert f"{train}:5: undecodable bytes" in out
    assert "'never_seen' in eval was not seen in train" in out
    assert "`train.metric_for_best` = 'bleu'" in out
    # A multi-task config: every head's files.
    cfg = {
        "model": {"base": "tiny"},
        "heads": {
            "a": {"data": {"train": str(tmp_path / "nope.csv")}},
            "b": {"data": {"train": str(ev)}, "task": {"type": "regresion"}},
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*CLI, "validate", str(path)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2
    assert "heads.a: `data.train`: file not found" in res.stderr, res.stderr
    assert "`heads.b.task.type` = 'regresion' is not a task type" in res.stderr
