"""benchmarks/defaults.py's few-shot sets: K training rows per label of a bundled set, one fixed
draw, the parent set's whole test file."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .conftest import REPO


def _defaults() -> Any:
    spec = importlib.util.spec_from_file_location("defaults", REPO / "benchmarks" / "defaults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_few_shot_set_draws_k_rows_per_label_once_and_keeps_the_test_file(tmp_path: Path) -> None:
    defaults = _defaults()
    cfg = defaults.run_config("banking77-10shot", "new", tmp_path, None, seed=1)
    rows = _rows(Path(cfg.data.train))
    counts = Counter(r["category"] for r in rows)
    assert len(counts) == 77 and set(counts.values()) == {10}
    source = _rows(REPO / "data/banking77/train.csv")
    assert all(r in source for r in rows[:20])  # rows of the set itself, unchanged
    first = Path(cfg.data.train).read_bytes()
    again = defaults.run_config("banking77-10shot", "tuned", tmp_path, None, seed=2)
    assert Path(again.data.train).read_bytes() == first  # the draw does not follow --seed
    assert Path(cfg.data.test) == REPO / "data/banking77/test.csv" and cfg.data.eval is None
    assert Path(cfg.output_dir).name == "banking77-10shot-new-seed1"


def test_every_few_shot_set_and_mode_makes_a_valid_config(tmp_path: Path) -> None:
    # A set whose config leaves `data.label_column` at its default ("label") once failed here.
    defaults = _defaults()
    for name, (parent, k) in defaults.FEW_SHOT.items():
        assert parent in defaults.SETS
        cfg = defaults.run_config(name, "new", tmp_path, None)
        counts = Counter(r[cfg.data.label_column] for r in _rows(Path(cfg.data.train)))
        assert max(counts.values()) == k, (name, counts)
    for mode in defaults.MODES:
        cfg = defaults.run_config(
            "finsent-100shot", mode, tmp_path, None, best_params={"train.lr": 1e-4}
        )
        assert Path(cfg.output_dir).name == f"finsent-100shot-{mode}"
        if mode == "tuned-best":  # the study's values
            assert cfg.train.lr == 1e-4
        if mode == "new-frozen":
            assert cfg.train.frozen_candidate == "auto"
        if mode == "new-patience3":
            assert cfg.train.early_stopping_patience == 3


def test_tuned_best_takes_the_study_values_from_another_results_file(tmp_path: Path) -> None:
    defaults = _defaults()
    other = tmp_path / "elsewhere.json"
    params = {"train.lr": 2e-4, "train.batch_size": 16}
    other.write_text(json.dumps({"sets": {"authors": {"tuned": {"best_params": params}}}}))
    assert defaults.tuned_params("authors", {}, other) == params
    assert defaults.tuned_params("finsent", {}, other) is None  # that set has no study there
    here = {"tuned": {"best_params": {"train.lr": 1e-4}}}
    assert defaults.tuned_params("authors", here, None) == {"train.lr": 1e-4}
    cfg = defaults.run_config("authors", "tuned-best", tmp_path, None, best_params=params)
    assert cfg.train.lr == 2e-4 and cfg.train.batch_size == 16
