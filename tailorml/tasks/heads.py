"""Heads of a model: one for a single-task model, several for a multi-task one.

Every model is a list of heads. A head is one task's outputs: head `h` owns the logit columns
`offset .. offset + size - 1` of the model, and its softmax / sigmoid / loss only ever sees those
columns. A multi-task model is one encoder whose output layer holds the heads side by side; the rows
of a linear layer are independent, so this is exactly N heads on one encoder, and every stage that
handles a classifier (ONNX export, int8, serving) handles it unchanged.

A single-task model is the one-head case: its only head has the empty name `""`, and the functions
here give its results flat (metrics, predictions) where a multi-task model's come per head. This
module is the one place that knows the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorml.evaluate.metrics import scalar_metrics

if TYPE_CHECKING:
    from tailorml.config.schema import RunConfig
    from tailorml.tasks.base import Task

MULTITASK = "multitask"  # task.json's top-level `task` of a model with named heads

# Per-head data settings kept in task.json (read back by evaluate/predict/serve).
DATA_KEYS = ("text_column", "text_pair_column", "label_column", "label_separator", "max_length")


@dataclass(frozen=True)
class HeadSpec:
    name: str  # "" for the only head of a single-task model
    task: str
    labels: list[str] | None
    offset: int
    size: int
    multilabel_threshold: float = 0.5
    data: dict[str, Any] = field(default_factory=dict, compare=False)  # DATA_KEYS of its data

    @property
    def columns(self) -> slice:
        return slice(self.offset, self.offset + self.size)

    @property
    def kind(self) -> Task:
        """The head's task (of any family whose heads are logit columns: text or images)."""
        from tailorml.tasks import find_task

        return find_task(self.task)  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "labels": self.labels,
            "offset": self.offset,
            "size": self.size,
            "multilabel_threshold": self.multilabel_threshold,
            **self.data,
        }

    @staticmethod
    def from_json(h: dict[str, Any]) -> HeadSpec:
        return HeadSpec(
            str(h.get("name") or ""),
            h["task"],
            h.get("labels"),
            int(h["offset"]),
            int(h["size"]),
            float(h.get("multilabel_threshold", 0.5)),
            {k: h[k] for k in DATA_KEYS if k in h},
        )


def layout(heads: list[tuple[str, str, list[str] | None]]) -> list[HeadSpec]:
    """(name, task, labels) per head -> specs with consecutive column ranges."""
    from tailorml.tasks import get_task

    out, offset = [], 0
    for name, task, labels in heads:
        size = get_task(task).head_size(labels)
        out.append(HeadSpec(name, task, labels, offset, size))
        offset += size
    return out


def is_single(heads: list[HeadSpec]) -> bool:
    """One unnamed head: a single-task model, whose outputs are reported flat."""
    return len(heads) == 1 and not heads[0].name


def column_names(specs: list[HeadSpec]) -> list[str]:
    """One name per output column: the label (`head:label` with several heads), or the head's
    name (`value` for an unnamed one) for a column without a label."""
    names: list[str] = []
    for h in specs:
        if not h.labels:  # one unlabelled column (regression): named after the head
            names.extend([h.name or "value"] * h.size)
            continue
        names.extend(f"{h.name}:{lab}" if h.name else lab for lab in h.labels)
    return names


def classifier_head(heads: list[HeadSpec]) -> dict[str, Any]:
    """config.json settings of the model holding these heads: width, problem type, label names.
    One head keeps its task's problem type (so `AutoModelForSequenceClassification` computes the
    right loss when called with labels); several are one classifier over every column."""
    labels = heads[0].labels if is_single(heads) else column_names(heads)
    out: dict[str, Any] = {
        "num_labels": sum(h.size for h in heads),
        "problem_type": heads[0].kind.problem_type
        if is_single(heads)
        else "single_label_classification",
    }
    if labels:
        out["id2label"] = dict(enumerate(labels))
        out["label2id"] = {name: i for i, name in enumerate(labels)}
    return out


def specs_from_info(info: dict[str, Any]) -> list[HeadSpec]:
    """The heads a folder's task.json describes. task.json lists them under `heads`; a folder
    written before that (single-task, labels and columns at the top level) is one unnamed head."""
    if info.get("heads"):
        return [HeadSpec.from_json(h) for h in info["heads"]]
    from tailorml.tasks import get_task

    task = info["task"]
    labels = info.get("labels")
    return [
        HeadSpec(
            "",
            task,
            labels,
            0,
            get_task(task).head_size(labels),
            float(info.get("multilabel_threshold", 0.5)),
            {k: info[k] for k in DATA_KEYS if k in info},
        )
    ]


# Kept under its old name: finwatch and user scripts read heads this way.
head_specs = specs_from_info


def split_logits(info: dict[str, Any], logits: np.ndarray) -> dict[str, np.ndarray]:
    """head name -> that head's logits (batch, size)."""
    return {h.name: logits[:, h.columns] for h in specs_from_info(info)}


def task_json(heads: list[HeadSpec], base: str, extra: dict[str, Any] | None = None) -> dict:
    """task.json of a model folder: the heads, plus top-level fields that describe the model as a
    whole (its task or `multitask`, every column's label, the longest max_length, the first
    head's text columns) so that older readers still find what they used to."""
    first = heads[0]
    single = is_single(heads)
    info: dict[str, Any] = {
        "task": first.task if single else MULTITASK,
        "labels": first.labels if single else column_names(heads),
        "max_length": max(int(h.data.get("max_length", 128)) for h in heads),
        "text_column": first.data.get("text_column", "text"),
        "text_pair_column": first.data.get("text_pair_column"),
        "base": base,
        "heads": [h.to_json() for h in heads],
    }
    if single:
        info.update(
            label_column=first.data.get("label_column", "label"),
            label_separator=first.data.get("label_separator", ";"),
            multilabel_threshold=first.multilabel_threshold,
        )
    info.update(extra or {})
    return info


# ---- results: flat for one unnamed head, per head (+ means) for several ----------------------


def combine_metrics(per: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Metrics of one split from each head's. One unnamed head: its metrics as they are. Several:
    each head's under `heads`, flat `head/metric` scalars, and `mean_<metric>` over the heads for
    metrics every head reports (`loss` = the mean loss)."""
    if list(per) == [""]:
        return per[""]
    out: dict[str, Any] = {"heads": per}
    scalars = {n: scalar_metrics(m) for n, m in per.items()}
    for n, sc in scalars.items():
        out.update({f"{n}/{k}": v for k, v in sc.items()})
    common = set.intersection(*(set(sc) for sc in scalars.values()))
    for k in sorted(common):
        vals = [sc[k] for sc in scalars.values()]
        out["loss" if k == "loss" else f"mean_{k}"] = sum(vals) / len(vals)
    return out


def nest_heads(per: dict[str, Any]) -> dict[str, Any]:
    """A per-head document (data summary, ...): one unnamed head's as it is, else under `heads`."""
    return per[""] if list(per) == [""] else {"heads": per}


def mean_over_heads(per: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """One unnamed head's values as they are; several heads' means of `keys`, each head's under
    `heads` (compress judges a multi-task model on the mean accuracy of its heads)."""
    if list(per) == [""]:
        return per[""]
    return {**{k: sum(p[k] for p in per.values()) / len(per) for k in keys}, "heads": per}


def with_heads(doc: dict[str, Any], per: dict[str, Any]) -> dict[str, Any]:
    """`doc`, plus each head's part under `heads` when the heads are named."""
    return doc if list(per) == [""] else {**doc, "heads": per}


def head_metrics(split_metrics: dict[str, Any], name: str) -> dict[str, Any]:
    """One head's metrics out of a split's combined metrics."""
    return split_metrics["heads"][name] if "heads" in split_metrics else split_metrics


def metric_choices(heads: list[HeadSpec]) -> list[str]:
    """Every eval metric a run with these heads reports (what `train.metric_for_best` may be)."""
    if is_single(heads):
        return list(heads[0].kind.metrics)
    tasks = [h.kind for h in heads]
    common = set.intersection(*(set(t.metrics) for t in tasks)) - {"loss"}
    out = ["loss", *(f"mean_{m}" for m in sorted(common))]
    return out + [f"{h.name}/{m}" for h in heads for m in h.kind.metrics]


def default_metric(heads: list[HeadSpec]) -> str:
    """The tasks' default metric; with several heads its mean when they share it, else loss."""
    defaults = {h.kind.default_metric for h in heads}
    if is_single(heads):
        return defaults.pop()
    return f"mean_{defaults.pop()}" if len(defaults) == 1 else "loss"


def config_heads(cfg: RunConfig) -> list[HeadSpec]:
    """The heads a run config asks for, before any data is read (no labels, no columns yet):
    enough to check what depends only on the task types, such as `train.metric_for_best`."""
    return [HeadSpec(name, view.task.type, None, 0, 0) for name, view in cfg.head_views().items()]


def data_heads(cfg: RunConfig, labels: dict[str, list[str] | None]) -> list[HeadSpec]:
    """The heads of a run config once its data is read: laid out over the model's columns with
    each head's labels (`labels`: head name -> the labels of its training data, None for a
    regression), each keeping its data columns (task.json: evaluate, predict and serve read
    with them)."""
    views = cfg.head_views()
    heads = layout([(n, v.task.type, labels[n]) for n, v in views.items()])
    return [replace(h, data={k: getattr(views[h.name].data, k) for k in DATA_KEYS}) for h in heads]


def choose_metric(chosen: str | None, heads: list[HeadSpec]) -> str:
    """`train.metric_for_best`, checked against what a run with these heads reports, or the
    default. ConfigError names the choices."""
    from tailorml.errors import ConfigError

    allowed = metric_choices(heads)
    if chosen and chosen not in allowed:
        raise ConfigError(
            f"`train.metric_for_best` = {chosen!r} is not reported for {what_reports(heads)}. "
            f"Choose one of {allowed}."
        )
    return chosen or default_metric(heads)


def what_reports(heads: list[HeadSpec]) -> str:
    """`classification` or `this multi-task run`: who the metrics belong to, for messages."""
    return heads[0].task if is_single(heads) else "this multi-task run"


def curve_metrics(heads: list[HeadSpec], eval_metrics: dict[str, Any]) -> list[str]:
    """The eval scalars to plot over training (loss has its own plot)."""
    if is_single(heads):
        return [m for m in heads[0].kind.metrics if m != "loss"]
    return sorted(k for k, v in eval_metrics.items() if k != "loss" and not isinstance(v, dict))


def heads_summary(heads: list[HeadSpec], base: str) -> str:
    """The report's first line about the model."""
    if is_single(heads):
        return f"task: **{heads[0].task}**, base model: `{base}`"
    names = ", ".join(f"**{h.name}** ({h.task})" for h in heads)
    return f"multi-task: one `{base}` encoder, heads {names}"


def section_title(head: HeadSpec) -> str | None:
    """A report section per named head; none for a single-task model."""
    return f"Head `{head.name}` ({head.task})" if head.name else None


def file_suffix(head: HeadSpec) -> str:
    """`_topic` in plots/confusion_matrix_topic.png; nothing for an unnamed head."""
    return f"_{head.name}" if head.name else ""


def for_row(per_head: dict[str, list[dict[str, Any]]], i: int) -> dict[str, Any]:
    """Row `i`'s prediction from each head's list: flat for one unnamed head, else by head."""
    if list(per_head) == [""]:
        return per_head[""][i]
    return {"heads": {n: preds[i] for n, preds in per_head.items()}}


def format_outputs(heads: list[HeadSpec], logits: np.ndarray, top_k: int) -> list[dict[str, Any]]:
    """`tailor predict`'s prediction per row of a model's logits (batch, columns)."""
    per = {h.name: h.kind.format(logits[:, h.columns], h, top_k) for h in heads}
    return [for_row(per, i) for i in range(len(logits))]


def api_outputs(heads: list[HeadSpec], logits: np.ndarray) -> list[dict[str, Any]]:
    """The service's prediction objects per row (every label's score)."""
    per = {}
    for h in heads:
        formatted = h.kind.format(logits[:, h.columns], h, max(1, h.size))
        per[h.name] = [h.kind.api_item(p) for p in formatted]
    return [for_row(per, i) for i in range(len(logits))]


def named_heads(heads: list[HeadSpec]) -> list[HeadSpec]:
    """The heads a client addresses by name (none for a single-task model)."""
    return [h for h in heads if h.name]
