"""Turn table rows into checked examples: text (and pair), label ids, source lines.

Every bad row is reported with file and line; `data.on_bad_rows` decides whether the run stops
(`error`) or the rows are dropped and counted (`skip`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorml.data.readers import BadRow, Table, has_surrogates, is_missing
from tailorml.errors import DataError

if TYPE_CHECKING:
    from tailorml.config.schema import DataConfig
    from tailorml.tasks.base import Task


@dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]  # int (class id), list[int] (multilabel ids) or float (regression)
    source: str
    lines: list[int]
    bad: list[BadRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    @staticmethod
    def concat(parts: list[Examples], source: str) -> Examples:
        """Several sets one after the other (e.g. the heads' eval splits of a multi-task run)."""
        has_pairs = any(p.pairs is not None for p in parts)
        return Examples(
            [t for p in parts for t in p.texts],
            [x for p in parts for x in (p.pairs or [""] * len(p))] if has_pairs else None,
            [y for p in parts for y in p.labels],
            source,
            [n for p in parts for n in p.lines],
        )

    def subset(self, idx: list[int] | np.ndarray, source: str) -> Examples:
        idx = [int(i) for i in idx]
        return Examples(
            [self.texts[i] for i in idx],
            [self.pairs[i] for i in idx] if self.pairs is not None else None,
            [self.labels[i] for i in idx],
            source,
            [self.lines[i] for i in idx],
        )


def canonical_label(value: Any, label_names: list[str] | None) -> str:
    """A label as a string key. Integer-like values map through `label_names` when given."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if label_names is not None:
        try:
            as_int = int(text)
        except ValueError:
            return text  # already a name
        if 0 <= as_int < len(label_names):
            return label_names[as_int]
        return text
    return text


def split_multi(value: Any, sep: str) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
                if isinstance(parsed, list):
                    return parsed
            except json.JSONDecodeError:
                pass
        return [p for p in (s.strip() for s in text.split(sep)) if p]
    return [value]


def label_order(keys: set[str], label_names: list[str] | None) -> list[str]:
    """Stable label order: `label_names` when given (they declare the classes: a label outside
    them is a bad row, not a new class), numeric when all ints, else sorted."""
    if label_names is not None:
        return list(label_names)
    if keys and all(k.lstrip("-").isdigit() for k in keys):
        return sorted(keys, key=int)
    return sorted(keys)


def outside_names(key: str, label_names: list[str] | None) -> str | None:
    """Why a canonical label is not a declared class, or None when it is one (or none are)."""
    if label_names is None or key in label_names:
        return None
    return (
        f"label {key!r} is not one of data.label_names {label_names} "
        f"(nor an index 0..{len(label_names) - 1} into them)"
    )


def infer_labels(table: Table, cfg: DataConfig, task: Task) -> list[str] | None:
    """The label vocabulary of the training table (None when the task has no classes). Rows with
    missing labels are skipped here; `build_examples` reports them."""
    if not task.has_labels:
        return None
    values = (row.get(cfg.label_column) for row in table.rows)
    return task.infer_labels((v for v in values if _missing_label(v) is None), cfg)


def build_examples(
    table: Table,
    cfg: DataConfig,
    task: Task,
    labels: list[str] | None,
    role: str,
    require_labels: bool = True,
) -> Examples:
    """Check and convert rows: the columns the task reads (a text, a second text for pair
    tasks, the label), each value checked. `labels` is the training vocabulary (None when the
    task has no classes)."""
    cols: dict[str, str | None] = {"data.text_column": cfg.text_column}
    if task.pair:
        cols["data.text_pair_column"] = cfg.text_pair_column
    if require_labels:
        cols["data.label_column"] = cfg.label_column
    table.require_columns(cols)
    index = {name: i for i, name in enumerate(labels or [])}
    texts: list[str] = []
    pairs: list[str] | None = [] if task.pair else None
    ys: list[Any] = []
    lines: list[int] = []
    bad = list(table.bad)
    src = str(table.path)
    for row, line in zip(table.rows, table.lines, strict=True):
        text = row.get(cfg.text_column)
        reason = _text_problem(text, "text")
        pair = None
        if reason is None and pairs is not None:
            pair = row.get(cfg.text_pair_column or "")
            reason = _text_problem(pair, "text pair")
        y: Any = None
        if reason is None and require_labels:
            y, reason = _label(row.get(cfg.label_column), cfg, task, index, role)
        if reason is not None:
            bad.append(BadRow(src, line, reason))
            continue
        texts.append(str(text))
        if pairs is not None:
            pairs.append(str(pair))
        ys.append(y)
        lines.append(line)
    ex = Examples(texts, pairs, ys, src, lines, bad)
    if bad and cfg.on_bad_rows == "error":
        shown = "\n".join(f"  {b}" for b in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} bad row(s) in {src} ({role}):\n{shown}{more}\n"
            "Fix them, or set `data.on_bad_rows: skip` to drop and count them."
        )
    if not texts:
        raise DataError(f"{src} ({role}) has no usable rows after checks. Check the columns.")
    return ex


def _text_problem(value: Any, what: str) -> str | None:
    if is_missing(value) or not str(value).strip():
        return f"empty {what}"
    if isinstance(value, str) and has_surrogates(value):
        return f"undecodable bytes in {what} (not UTF-8)"
    return None


def _missing_label(value: Any) -> str | None:
    """Why `value` is no label at all (the same rule for the vocabulary and the row checks)."""
    if is_missing(value):
        return "missing label (NaN)" if isinstance(value, float) else "missing label"
    if isinstance(value, str) and value.strip().lower() in ("nan", "null", "none"):
        return f"missing label ({value.strip()})"
    if isinstance(value, str) and has_surrogates(value):
        return "undecodable bytes in label (not UTF-8)"
    return None


def _label(
    value: Any, cfg: DataConfig, task: Task, index: dict[str, int], role: str
) -> tuple[Any, str | None]:
    reason = _missing_label(value)
    if reason is not None:
        return None, reason
    return task.parse_label(value, cfg, index, role)


def stratified_split(
    ex: Examples, fraction: float, seed: int, stratify: bool, name: str
) -> tuple[Examples, Examples]:
    """Hold out `fraction` of `ex` (with `stratify`, by class when every class has 2+ rows)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(ex))
    strat = None
    if stratify:
        counts = Counter(ex.labels)
        n_hold = max(1, round(fraction * len(ex)))
        if min(counts.values()) >= 2 and n_hold >= len(counts):
            strat = ex.labels
    keep, hold = train_test_split(idx, test_size=fraction, random_state=seed, stratify=strat)
    return ex.subset(sorted(keep), ex.source), ex.subset(sorted(hold), f"{ex.source} ({name} split)")
