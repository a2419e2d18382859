"""The task protocol: everything that differs between task types, in one object per type.

The rest of the code never branches on a task's name. It asks the task object, found by
`task.type` in the registry (`tailorml.tasks.get_task`), for what differs:

    config    config_problems                   cross-field checks for one head's config
    data      pair, infer_labels, parse_label,  the reader's schema: which columns (text, and a
              stratify, min_labels, balance,     pair for pair tasks), what a label is, splits
              example_rows
    model     family, problem_type, head_size   the model a head of this task needs
    training  label_tensor, loss                a batch's targets and the per-example loss
    metrics   metrics, default_metric,          eval.json, metric_for_best, report tables
              compute_metrics
    output    format, api_item, api_model       `tailor predict` JSONL, the service's answer
    parity    agreement                         does a compressed variant give the same answers

A head (`tailorml.tasks.heads.HeadSpec`) is one task's outputs inside a model; a single-task model
is the one-head case. Heads of one `family` share a model: every head of the sequence-classifier
family is a block of logit columns of one `AutoModelForSequenceClassification`.

A task of another model family (`generation`: a causal LM fine-tuned on prompt -> response
pairs) implements only `TaskInfo`; `tailor finetune` picks the recipe by the task's family
(tailorml/recipes/sft.py for the causal LM) and the classifier-only steps refuse it by family.

To add a task type: write one module in this package implementing `Task`, `register` an instance
at its bottom, import the module in `tailorml/tasks/__init__.py`, and the conformance suite
(tests/test_tasks.py) runs on it: build tiny, train, save, reload, predict, serve one request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from tailorml.config.schema import DataConfig
    from tailorml.tasks.heads import HeadSpec

SEQUENCE_CLASSIFIER = "sequence-classifier"
CAUSAL_LM = "causal-lm"
IMAGE_CLASSIFIER = "image-classifier"  # tailorml/tasks/images.py: a convolutional network


@runtime_checkable
class TaskInfo(Protocol):
    """What every registered task type answers, whatever model family it trains: its name,
    family, metrics, config checks and example rows. A task of the sequence-classifier family
    implements the whole `Task` below; a task of another family (the causal LM of `generation`)
    implements this part and is trained by its own recipe, chosen by family."""

    @property
    def name(self) -> str:
        """The `task.type` value."""
        ...

    @property
    def description(self) -> str:
        """One line for `tailor tasks`."""
        ...

    @property
    def family(self) -> str:
        """The model its heads live in; heads of one family can share a model."""
        ...

    @property
    def metrics(self) -> tuple[str, ...]:
        """Scalar metrics reported per split ("loss" first)."""
        ...

    @property
    def default_metric(self) -> str:
        """Picks the best checkpoint unless train.metric_for_best says otherwise."""
        ...

    @property
    def label_help(self) -> str:
        """What a label (or target) looks like in a data file (for `tailor tasks`)."""
        ...

    def config_problems(self, prefix: str, data: dict[str, Any]) -> list[str]:
        """Problems of one head's raw `data` mapping that involve the task, each naming the
        field (with `prefix`, e.g. `heads.topic.`) and the fix."""
        ...

    def example_rows(self, n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """`n` synthetic rows a tiny model learns in seconds, and the `data:` settings that read
        them: shown by `tailor tasks` and run by the conformance suite."""
        ...


@runtime_checkable
class Task(TaskInfo, Protocol):
    """A task whose heads are blocks of logit columns of one sequence classifier."""

    @property
    def problem_type(self) -> str:
        """transformers' `config.problem_type` of a one-head model."""
        ...

    @property
    def pair(self) -> bool:
        """Inputs are text pairs (data.text_pair_column)."""
        ...

    @property
    def has_labels(self) -> bool:
        """A label vocabulary (class names); False: a number is predicted."""
        ...

    @property
    def stratify(self) -> bool:
        """Held-out splits keep the class balance."""
        ...

    @property
    def min_labels(self) -> int:
        """Fewest distinct labels the training data must hold."""
        ...

    @property
    def api_model(self) -> type[BaseModel]:
        """One prediction in the service's answer (its OpenAPI schema)."""
        ...

    # ---- config and data --------------------------------------------------------------------
    def infer_labels(self, values: Iterable[Any], d: DataConfig) -> list[str] | None:
        """The label vocabulary from the training labels (missing values already dropped)."""
        ...

    def parse_label(
        self, value: Any, d: DataConfig, index: dict[str, int], role: str
    ) -> tuple[Any, str | None]:
        """(label as stored in Examples, None) or (None, reason the row is bad). `index`: label
        name -> id of the training vocabulary; `value` is not missing (checked before)."""
        ...

    def balance(self, ys: list[Any], labels: list[str] | None) -> dict[str, int]:
        """label -> rows, for the class-balance report ({} when there are no classes)."""
        ...

    # ---- model and training -----------------------------------------------------------------
    def head_size(self, labels: list[str] | None) -> int:
        """Output columns of a head with these labels."""
        ...

    def label_tensor(self, ys: list[Any], size: int) -> torch.Tensor:
        """Targets of a batch for `loss`."""
        ...

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example loss, shape (batch,), from this head's logits (batch, size)."""
        ...

    # ---- evaluation, output, parity ---------------------------------------------------------
    def compute_metrics(
        self, logits: np.ndarray, ys: list[Any], labels: list[str] | None
    ) -> dict[str, Any]:
        """Every metric of one split: the scalars in `metrics` (but loss) and details
        (per-class scores, confusion matrix, `n`)."""
        ...

    def format(self, logits: np.ndarray, head: HeadSpec, top_k: int) -> list[dict[str, Any]]:
        """One prediction per row, as `tailor predict` writes it."""
        ...

    def api_item(self, pred: dict[str, Any]) -> dict[str, Any]:
        """A `format` item as the service answers it (fits `api_model`)."""
        ...

    def agreement(self, ref: np.ndarray, got: np.ndarray, head: HeadSpec) -> float:
        """Share of rows on which a variant's logits give the reference's answer."""
        ...
