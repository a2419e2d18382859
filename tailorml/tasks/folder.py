"""A model folder and its task.json: the one reader, the one writer, and the one function that
resolves what a user points at (a run folder, RUN_DIR/model, RUN_DIR/compressed/<variant>) to
the folder that holds the model.

task.json holds the heads (see `tailorml.tasks.heads`) and how to run the folder: `runtime`
(`torch` or `onnxruntime`), `onnx_file`, `torch_dynamic_int8`, `torch_int8_state`, `variant`.
It is read without importing torch, so an ONNX folder is served without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailorml.errors import ConfigError
from tailorml.files import atomic_json
from tailorml.tasks.base import IMAGE_CLASSIFIER, SEQUENCE_CLASSIFIER
from tailorml.tasks.heads import HeadSpec, is_single, specs_from_info

if TYPE_CHECKING:
    from tailorml.config.schema import DataConfig

TASK_JSON = "task.json"


def resolve_model_dir(path: str | Path) -> Path:
    """RUN_DIR -> RUN_DIR/model; a model folder (with task.json) as it is; else a clear error."""
    path = Path(path)
    if (path / TASK_JSON).is_file():
        return path
    if (path / "model" / TASK_JSON).is_file():
        return path / "model"
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist. Give a run folder (with model/), RUN_DIR/model or "
            "RUN_DIR/compressed/<variant>."
        )
    if (path / "compressed").is_dir():
        variants = sorted(p.name for p in (path / "compressed").iterdir() if p.is_dir())
        hint = f" Its compressed variants: {', '.join(variants)}." if variants else ""
    else:
        hint = ""
    raise ConfigError(
        f"{path} is not a finished tailorml run (no model/task.json) nor a model folder (no "
        "task.json). Run `tailor finetune CONFIG` first, or point at RUN_DIR/model or "
        f"RUN_DIR/compressed/<variant>.{hint}"
    )


@dataclass
class ModelInfo:
    """task.json of a model folder, read once."""

    folder: Path
    raw: dict[str, Any]  # the file as written (runtime extras included)
    heads: list[HeadSpec]

    @property
    def task(self) -> str:
        """The model's task type, or `multitask` for several named heads."""
        return str(self.raw["task"])

    @property
    def labels(self) -> list[str] | None:
        return self.raw.get("labels")

    @property
    def max_length(self) -> int:
        return int(self.raw.get("max_length") or 128)

    @property
    def text_column(self) -> str:
        return str(self.raw.get("text_column") or "text")

    @property
    def text_pair_column(self) -> str | None:
        return self.raw.get("text_pair_column")

    @property
    def pair(self) -> bool:
        """The model reads text pairs."""
        return any(h.kind.pair for h in self.heads) or bool(self.text_pair_column)

    @property
    def single(self) -> bool:
        return is_single(self.heads)

    @property
    def width(self) -> int:
        """Output columns of the model (every head's)."""
        return max(h.offset + h.size for h in self.heads)

    def head(self, name: str | None, what: str) -> HeadSpec:
        """The head a user named (`--head`); the only head when the model has one."""
        names = [h.name for h in self.heads]
        if name is None and self.single:
            return self.heads[0]
        if name is None:
            raise ConfigError(
                f"{self.folder} is a multi-task model with heads {sorted(names)}: pass --head "
                f"NAME to say whose labels {what} holds."
            )
        if self.single:
            raise ConfigError(
                f"--head {name}: {self.folder} is a single-task model; leave out --head."
            )
        if name not in names:
            raise ConfigError(
                f"--head {name}: {self.folder} has heads {sorted(names)}. Choose one of them."
            )
        return self.heads[names.index(name)]


def head_data_config(head: HeadSpec, **overrides: Any) -> DataConfig:
    """How to read a labeled file for `head`: the columns it was trained with (task.json), with
    `overrides` (None values ignored). Integer labels in the file map to the saved names by
    position, unless the names themselves are integers."""
    from tailorml.config.schema import DataConfig

    fields: dict[str, Any] = {
        "text_column": head.data.get("text_column") or "text",
        "text_pair_column": head.data.get("text_pair_column"),
        "label_column": head.data.get("label_column") or "label",
        "label_separator": head.data.get("label_separator") or ";",
        "max_length": head.data.get("max_length") or 128,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    labels = head.labels
    if labels and all(not str(x).lstrip("-").isdigit() for x in labels):
        fields["label_names"] = labels
    return DataConfig.model_validate(fields)


def read_model_info(folder: str | Path) -> ModelInfo:
    """Read `folder`/task.json (resolve a run folder first with `resolve_model_dir`)."""
    folder = Path(folder)
    path = folder / TASK_JSON
    if not path.is_file():
        raise ConfigError(
            f"{folder} is not a tailorml model folder (no task.json). Point at RUN_DIR/model or "
            "RUN_DIR/compressed/<variant>."
        )
    try:
        raw = dict(json.loads(path.read_text(encoding="utf-8")))
        family = raw.get("family", SEQUENCE_CLASSIFIER)
        if family == IMAGE_CLASSIFIER:
            raise ConfigError(
                f"{folder} holds an image model, and this step reads text. Score it with "
                "`tailor evaluate RUN --data IMAGES`, serve it with `tailor serve` (images in), "
                "compress it with `tailor compress` (docs/images.md)."
            )
        if family != SEQUENCE_CLASSIFIER:
            raise ConfigError(
                f"{folder} holds a {family} model (task {raw.get('task')!r}), not a classifier. "
                "Run it with `tailor generate`, serve it with `tailor serve`, score it with "
                "`tailor evaluate`; it predicts no labels."
            )
        heads = specs_from_info(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} is damaged ({type(exc).__name__}: {exc}). Re-create the folder with "
            "`tailor finetune` or `tailor compress`."
        ) from None
    for h in heads:  # an unknown task type fails here, with the known ones listed
        h.kind  # noqa: B018
    return ModelInfo(folder, raw, heads)


def write_task_json(folder: Path, info: dict[str, Any]) -> None:
    atomic_json(folder / TASK_JSON, info)


def variant_task_json(info: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """task.json of a compressed variant: the source's heads and columns, plus how to run it."""
    keep = {
        k: v
        for k, v in info.items()
        # lora_base: a variant holds a whole (merged) model, never an adapter.
        if k not in ("runtime", "onnx_file", "torch_int8_state", "torch_dynamic_int8", "lora_base")
    }
    keep.update(extra)
    return keep


def folder_family(path: str | Path) -> str | None:
    """The model family a run or model folder holds (from task.json), or None when `path` holds
    no task.json (then the caller decides, e.g. a plain Hugging Face folder)."""
    path = Path(path)
    for folder in (path, path / "model"):
        if (folder / TASK_JSON).is_file():
            try:
                raw = json.loads((folder / TASK_JSON).read_text(encoding="utf-8"))
            except ValueError:
                return None
            return str(raw.get("family", SEQUENCE_CLASSIFIER)) if isinstance(raw, dict) else None
    return None


def read_task_json(folder: str | Path) -> dict[str, Any]:
    """task.json of a folder as written ({} when there is none: a plain Hugging Face folder)."""
    path = Path(folder) / TASK_JSON
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path} is damaged ({exc}). Re-create the folder.") from None
    return dict(raw) if isinstance(raw, dict) else {}
