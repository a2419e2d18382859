"""From config to checked, split examples: read files, check rows, infer labels, split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tailorml.data.examples import Examples, build_examples, infer_labels, stratified_split
from tailorml.data.readers import read_table
from tailorml.errors import DataError

if TYPE_CHECKING:
    from tailorml.config.schema import RunConfig
    from tailorml.tasks.base import Task

SPLITS = ("train", "eval", "test")


@dataclass
class Splits:
    train: Examples
    eval: Examples
    test: Examples
    labels: list[str] | None  # None when the task has no classes
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"labels": self.labels, "splits": {}, "notes": self.notes}
        for name in SPLITS:
            ex: Examples = getattr(self, name)
            out["splits"][name] = {
                "source": ex.source,
                "rows": len(ex),
                "bad_rows_skipped": len(ex.bad),
            }
        return out

    def balance(self, task: Task) -> dict[str, dict[str, int]]:
        """label -> {split: count} for the class-balance report ({} without classes)."""
        out: dict[str, dict[str, int]] = {}
        for name in SPLITS:
            for label, n in task.balance(getattr(self, name).labels, self.labels).items():
                out.setdefault(label, {})[name] = n
        return out


def prepare_splits(cfg: RunConfig, task: Task) -> Splits:
    """Read and check every split of a (one-head) config. Raises DataError listing every
    problem found."""
    d = cfg.data
    if d.train is None:
        raise DataError("`data.train` is not set. Give the path of the training file.")
    problems: list[str] = []
    tables = {}
    for key in SPLITS:
        path = getattr(d, key)
        if path is None:
            continue
        try:
            tables[key] = read_table(path, d.limit, key=f"data.{key}")
        except DataError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DataError(problems)

    labels = infer_labels(tables["train"], d, task)
    if labels is not None and len(labels) < task.min_labels:
        raise DataError(
            f"{d.train}: column {d.label_column!r} has {len(labels)} distinct label(s); "
            f"{task.name} needs at least {task.min_labels}. Check `data.label_column`."
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
    seed, strat = cfg.train.seed, task.stratify
    kind = "stratified split" if strat else "random split"
    if "test" not in built:
        train, built["test"] = stratified_split(train, d.test_fraction, seed, strat, "test")
        notes.append(f"test: {d.test_fraction:.0%} {kind} of train (seed {seed})")
    if "eval" not in built:
        train, built["eval"] = stratified_split(train, d.eval_fraction, seed, strat, "eval")
        notes.append(f"eval: {d.eval_fraction:.0%} {kind} of train (seed {seed})")
    train.bad = built["train"].bad
    return Splits(train, built["eval"], built["test"], labels, notes)
