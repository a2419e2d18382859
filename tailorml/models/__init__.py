"""Models by family: every task names the family its heads live in (`Task.family`), and the
family builds the model for a list of heads. A new family (a causal LM, an image network) is one
more entry here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tailorml.errors import ConfigError

if TYPE_CHECKING:
    from tailorml.config.schema import ModelConfig
    from tailorml.tasks.heads import HeadSpec


def model_family(heads: list[HeadSpec]) -> str:
    """The one family all heads share (heads of different families cannot share a model)."""
    families = {h.kind.family for h in heads}
    if len(families) != 1:
        kinds = ", ".join(f"{h.name or 'the model'}: {h.task} ({h.kind.family})" for h in heads)
        raise ConfigError(
            f"These heads cannot share one model: {kinds}. Train them as separate runs."
        )
    return families.pop()


# family -> (module, function) building a model for a list of heads; imported when used.
BUILDERS = {
    "sequence-classifier": ("tailorml.models.classifier", "build_classifier"),
    "causal-lm": ("tailorml.models.causal_lm", "build_causal_lm"),
    # its third argument is the images' channel count, not a tokenizer
    "image-classifier": ("tailorml.models.images", "build_image_classifier"),
}

# family -> (module, function) loading a model folder as a plain model (a LoRA folder: its base
# with the adapter merged in).
LOADERS = {
    "sequence-classifier": ("tailorml.models.classifier", "load_classifier"),
    "causal-lm": ("tailorml.models.causal_lm", "load_causal_lm"),
    "image-classifier": ("tailorml.models.images", "load_image_classifier"),
}


def load_model(folder: Any, family: str) -> Any:
    """A model folder of `family` (task.json's `family`), loaded by that family's loader."""
    import importlib

    if family not in LOADERS:
        raise ConfigError(f"No model loader for the {family!r} family of {folder}.")
    module, name = LOADERS[family]
    return getattr(importlib.import_module(module), name)(folder)


def build_model(
    cfg: ModelConfig, heads: list[HeadSpec], tokenizer: Any, family: str | None = None
) -> Any:
    """A fresh model for `heads` on the configured base (with LoRA adapters when `model.lora`
    is set; see tailorml/models/lora.py). A family without heads (the causal LM: its output is
    the vocabulary) is named by `family`, with `heads` empty."""
    import importlib

    family = family or model_family(heads)
    if family not in BUILDERS:  # pragma: no cover - every registered task names a known family
        raise ConfigError(f"No model builder for the {family!r} family.")
    module, name = BUILDERS[family]
    model = getattr(importlib.import_module(module), name)(cfg, heads, tokenizer)
    if cfg.lora is not None:  # the same model, its body frozen under low-rank adapters
        from tailorml.models.lora import apply_lora, head_modules

        model = apply_lora(model, cfg.lora, head_modules(model))
    return model
