"""From an image-classification config to checked splits: read each source once (tailorml/data/
images.py), check the labels against the training vocabulary, hold out eval/test from train when
they are not given (stratified), and report bad images with their paths."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorml.data.images import ImageSet, read_images, to_channels
from tailorml.data.readers import BadRow
from tailorml.errors import DataError

if TYPE_CHECKING:
    from tailorml.config.schema import RunConfig
    from tailorml.tasks.base import Task

SPLITS = ("train", "eval", "test")


@dataclass
class ImageSplits:
    train: ImageSet
    eval: ImageSet
    test: ImageSet
    labels: list[str]
    ys: dict[str, list[int]]  # split -> label ids
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        h, w, c = self.train.x.shape[1:]
        return int(h), int(w), int(c)

    def summary(self, task: Task) -> dict[str, Any]:
        out: dict[str, Any] = {"labels": self.labels, "image_shape": self.shape, "splits": {}}
        for name in SPLITS:
            s: ImageSet = getattr(self, name)
            out["splits"][name] = {"source": s.source, "rows": len(s), "bad_rows_skipped": len(s.bad)}
        out["class_balance"] = {
            name: task.balance(self.ys[name], self.labels) for name in SPLITS
        }
        out["notes"] = self.notes
        return out


def _raise_bad(bad: list[BadRow], src: str, role: str) -> None:
    shown = "\n".join(f"  {b.path}: {b.reason}" for b in bad[:10])
    more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
    raise DataError(
        f"{len(bad)} bad image(s) in {src} ({role}):\n{shown}{more}\n"
        "Fix or remove them, or set `data.on_bad_rows: skip` to drop and count them."
    )


def _label_ids(s: ImageSet, cfg: RunConfig, task: Task, labels: list[str], role: str) -> ImageSet:
    """`s` with its labels replaced by ids; a label outside the vocabulary is a bad row."""
    index = {name: i for i, name in enumerate(labels)}
    keep, ids, bad = [], [], list(s.bad)
    for i, value in enumerate(s.labels):
        y, reason = task.parse_label(value, cfg.data, index, role)
        if reason is not None:
            bad.append(BadRow(s.names[i], 0, reason))
            continue
        keep.append(i)
        ids.append(y)
    if bad and cfg.data.on_bad_rows == "error":
        _raise_bad(bad, s.source, role)
    out = s.subset(keep)
    out.labels, out.bad = ids, bad
    if not len(out):
        raise DataError(f"{s.source} ({role}) has no usable images after checks.")
    return out


def _hold_out(s: ImageSet, fraction: float, seed: int, name: str) -> tuple[ImageSet, ImageSet]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(s))
    counts = Counter(s.labels)
    n_hold = max(1, round(fraction * len(s)))
    strat = s.labels if min(counts.values()) >= 2 and n_hold >= len(counts) else None
    keep, hold = train_test_split(idx, test_size=fraction, random_state=seed, stratify=strat)
    kept, held = s.subset(np.sort(keep)), s.subset(np.sort(hold), f"{s.source} ({name} split)")
    kept.bad = s.bad
    return kept, held


def prepare_image_splits(cfg: RunConfig, task: Task) -> ImageSplits:
    """Every split of an image-classification config, checked. DataError lists the problems."""
    d = cfg.data
    if d.train is None:
        raise DataError("`data.train` is not set. Give an image folder, idx or npz file.")
    sets: dict[str, ImageSet] = {}
    problems: list[str] = []
    for key in SPLITS:
        path = getattr(d, key)
        if path is None:
            continue
        try:
            s = read_images(path, cfg.images, f"data.{key}")
            if d.limit is not None:
                s = s.subset(np.arange(min(d.limit, len(s))))
            if s.bad and d.on_bad_rows == "error":
                _raise_bad(s.bad, s.source, key)
            sets[key] = s
        except DataError as exc:
            problems += exc.problems
    if problems:
        raise DataError(problems)
    train = sets["train"]
    labels = task.infer_labels(train.labels, d) or []
    if len(labels) < task.min_labels:
        raise DataError(f"{train.source} holds {len(labels)} class(es); at least 2 are needed.")
    for key, s in list(sets.items()):
        if s.x.shape[1:3] != train.x.shape[1:3]:
            raise DataError(
                f"`data.{key}` images are {s.x.shape[1]}x{s.x.shape[2]}, train's "
                f"{train.x.shape[1]}x{train.x.shape[2]}. Set `images.size` to resize them all."
            )
        if s.x.shape[3] != train.x.shape[3]:
            s.x = to_channels(s.x, train.x.shape[3])
        sets[key] = _label_ids(s, cfg, task, labels, key)
    notes: list[str] = []
    train = sets["train"]
    for key, frac in (("test", d.test_fraction), ("eval", d.eval_fraction)):
        if key not in sets:
            train, sets[key] = _hold_out(train, frac, cfg.train.seed, key)
            notes.append(f"{key}: {frac:.0%} of train held out (stratified)")
    sets["train"] = train
    ys = {k: [int(v) for v in sets[k].labels] for k in SPLITS}
    return ImageSplits(sets["train"], sets["eval"], sets["test"], labels, ys, notes)
