"""The sequence-classifier family: one encoder with a linear output layer whose columns hold the
heads (see `tailorml.tasks.heads`). Built fresh from a base model, or loaded from a folder
(structurally pruned folders included)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tailorml.config.schema import ModelConfig
from tailorml.errors import ConfigError
from tailorml.models.base import quiet_transformers, resolve_base
from tailorml.models.lora import head_modules, is_lora_folder, load_merged
from tailorml.models.pooling import classifier_class, classifier_from_config, set_pooling
from tailorml.tasks.heads import classifier_head

if TYPE_CHECKING:
    from tailorml.tasks.heads import HeadSpec


def build_classifier(cfg: ModelConfig, heads: list[HeadSpec], tokenizer: Any) -> Any:
    """A sequence classifier for `heads` on `cfg.base`, with a fresh output layer, pooling the
    token states as `cfg.pooling` says (`tailorml.models.pooling`; the choice and its reason are
    on `model.config.tailorml_pooling` / `model.tailorml_pooling_why`)."""
    from transformers import AutoConfig

    quiet_transformers()
    head = classifier_head(heads)
    if cfg.dropout is not None:
        head["hidden_dropout_prob"] = cfg.dropout
        head["attention_probs_dropout_prob"] = cfg.dropout
    path = resolve_base(cfg.base)
    if path is None:
        config = tiny_config(cfg, len(tokenizer), tokenizer.pad_token_id, **head)
    else:
        config = AutoConfig.from_pretrained(str(path), **head)
    why = set_pooling(config, cfg.pooling, path)
    if path is None:
        model = classifier_from_config(config, attn_implementation="sdpa")
    else:
        model = load_classifier(path, config)
    model.tailorml_pooling_why = why
    return model


def tiny_config(cfg: ModelConfig, vocab_size: int, pad_id: int | None, **head: Any) -> Any:
    """The config of the `tiny` random BERT (tests): `cfg.tiny_*` sizes."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.tiny_hidden_size,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=max(1, cfg.tiny_hidden_size // 16),
        intermediate_size=cfg.tiny_hidden_size * 2,
        max_position_embeddings=512,
        pad_token_id=pad_id,
        **head,
    )


def check_lora_targets(cfg: ModelConfig) -> None:
    """`model.lora.target_modules` name layers of the base (its structure only: built on the
    meta device, no weights read). For `tailor validate`; training checks the real model."""
    import torch
    from transformers import AutoConfig

    from tailorml.models.lora import resolve_targets

    if cfg.lora is None or cfg.lora.target_modules is None:
        return
    path = resolve_base(cfg.base)
    config = AutoConfig.from_pretrained(str(path)) if path else tiny_config(cfg, 64, 0)
    set_pooling(config, cfg.pooling, path)
    with torch.device("meta"):
        model = classifier_from_config(config)
    resolve_targets(model, cfg.lora.target_modules, head_modules(model))


def load_classifier(path: str | Path, config: Any = None) -> Any:
    """`from_pretrained` for a sequence classifier, also for structurally pruned folders.

    A LoRA model folder (adapter_config.json) loads its base and merges the adapter into it.
    A pruned folder (written by `tailor compress`, `"tailorml_pruned": true` in config.json) holds
    Linear layers narrower than its config says (fewer heads / FFN neurons per layer); it is
    rebuilt from the config and each Linear is resized to the shape stored in the weights.
    """
    from transformers import AutoConfig

    quiet_transformers()
    path = Path(path)
    if is_lora_folder(path):  # base + adapter, merged: the rest sees a plain model
        return load_merged(path, load_classifier)
    if config is None:
        config = AutoConfig.from_pretrained(str(path))
    if not getattr(config, "tailorml_pruned", False):
        return classifier_class(config).from_pretrained(str(path), config=config)
    import torch
    from safetensors.torch import load_file

    state = load_file(str(path / "model.safetensors"))
    model = classifier_from_config(
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
