"""From config to checked, split examples: read files, check rows, infer labels, split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tailorml.config.schema import RunConfig
from tailorml.data.examples import (
    Examples,
    build_examples,
    class_balance,
    infer_labels,
    stratified_split,
)
from tailorml.data.readers import read_table
from tailorml.errors import DataError


@dataclass
class Splits:
    train: Examples
    eval: Examples
    test: Examples
    labels: list[str] | None  # None for regression
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        task_labels = self.labels
        out: dict[str, Any] = {"labels": task_labels, "splits": {}, "notes": self.notes}
        for name in ("train", "eval", "test"):
            ex: Examples = getattr(self, name)
            out["splits"][name] = {
                "source": ex.source,
                "rows": len(ex),
                "bad_rows_skipped": len(ex.bad),
            }
        return out


def prepare_splits(cfg: RunConfig) -> Splits:
    """Read and check every split. Raises DataError listing every problem found."""
    d, task = cfg.data, cfg.task.type
    if d.train is None:
        raise DataError("`data.train` is not set. Give the path of the training file.")
    problems: list[str] = []
    tables = {}
    for key in ("train", "eval", "test"):
        path = getattr(d, key)
        if path is None:
            continue
        try:
            tables[key] = read_table(path, d.limit, key=f"data.{key}")
        except DataError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DataError(problems)

    labels = None if task == "regression" else infer_labels(tables["train"], d, task)
    if labels is not None and len(labels) < 2 and task != "multilabel":
        raise DataError(
            f"{d.train}: column {d.label_column!r} has {len(labels)} distinct label(s); "
            "classification needs at least 2. Check `data.label_column`."
        )
    built: dict[str, Examples] = {}
    for key, table in tables.items():
        try:
            built[key] = build_examples(table, d, task, labels, role=key)
        except DataError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DataError(problems)

    notes: list[str] = []
    train = built["train"]
    skipped = {k: len(v.bad) for k, v in built.items() if v.bad}
    if skipped:
        notes.append(f"skipped bad rows: {skipped}")
    if "test" not in built:
        train, built["test"] = stratified_split(train, d.test_fraction, cfg.train.seed, task, "test")
        notes.append(f"test: {d.test_fraction:.0%} stratified split of train (seed {cfg.train.seed})")
    if "eval" not in built:
        train, built["eval"] = stratified_split(train, d.eval_fraction, cfg.train.seed, task, "eval")
        notes.append(f"eval: {d.eval_fraction:.0%} stratified split of train (seed {cfg.train.seed})")
    train.bad = built["train"].bad
    return Splits(train, built["eval"], built["test"], labels, notes)


def balance_table(splits: Splits, task: str) -> dict[str, dict[str, int]]:
    """label -> {split: count} for the class-balance report."""
    out: dict[str, dict[str, int]] = {}
    for name in ("train", "eval", "test"):
        for label, n in class_balance(getattr(splits, name), splits.labels, task).items():
            out.setdefault(label, {})[name] = n
    return out
