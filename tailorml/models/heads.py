"""Heads of a model folder: one for a single-task model, several for a multi-task one.

A multi-task model is one encoder with one linear head per task. It is stored as an ordinary
sequence classifier whose output layer holds the heads side by side: head `h` owns the logit
columns `offset .. offset + size - 1`, and its softmax / sigmoid / loss only ever sees those
columns. The rows of a linear layer are independent, so this is exactly N heads on one encoder,
and every stage that handles a classifier (ONNX export, int8, serving) handles it unchanged.

`task.json` of a multi-task folder has `"task": "multitask"` and `"heads"`: a list of
`{"name", "task", "labels", "offset", "size", "multilabel_threshold"}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MULTITASK = "multitask"


@dataclass(frozen=True)
class HeadSpec:
    name: str  # "" for the only head of a single-task model
    task: str
    labels: list[str] | None
    offset: int
    size: int
    multilabel_threshold: float = 0.5

    @property
    def columns(self) -> slice:
        return slice(self.offset, self.offset + self.size)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "labels": self.labels,
            "offset": self.offset,
            "size": self.size,
            "multilabel_threshold": self.multilabel_threshold,
        }


def head_size(task: str, labels: list[str] | None) -> int:
    return 1 if task == "regression" else len(labels or [])


def layout(heads: list[tuple[str, str, list[str] | None]]) -> list[HeadSpec]:
    """(name, task, labels) per head -> specs with consecutive column ranges."""
    out, offset = [], 0
    for name, task, labels in heads:
        size = head_size(task, labels)
        out.append(HeadSpec(name, task, labels, offset, size))
        offset += size
    return out


def column_names(specs: list[HeadSpec]) -> list[str]:
    """One name per output column: `head:label` (or `head` for a regression head)."""
    names: list[str] = []
    for h in specs:
        if h.task == "regression":
            names.append(h.name or "value")
        else:
            names.extend(f"{h.name}:{lab}" if h.name else lab for lab in h.labels or [])
    return names


def head_specs(info: dict[str, Any]) -> list[HeadSpec]:
    """The heads described by a folder's task.json (one unnamed head for a single-task model)."""
    if info.get("task") == MULTITASK:
        return [
            HeadSpec(
                h["name"],
                h["task"],
                h.get("labels"),
                int(h["offset"]),
                int(h["size"]),
                float(h.get("multilabel_threshold", 0.5)),
            )
            for h in info["heads"]
        ]
    task = info["task"]
    labels = info.get("labels")
    return [
        HeadSpec(
            "", task, labels, 0, head_size(task, labels), info.get("multilabel_threshold", 0.5)
        )
    ]


def split_logits(info: dict[str, Any], logits: np.ndarray) -> dict[str, np.ndarray]:
    """head name -> that head's logits (batch, size)."""
    return {h.name: logits[:, h.columns] for h in head_specs(info)}
