"""One readable file per workflow. The package itself only answers which recipe trains a config:
each model family has its own (classifier heads: finetune; a causal LM: sft; images: images)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# model family (tailorml.tasks.base) -> (module, function) that trains it; imported when used.
TRAINERS = {
    "sequence-classifier": ("tailorml.recipes.finetune", "finetune"),
    "causal-lm": ("tailorml.recipes.sft", "sft"),
    "image-classifier": ("tailorml.recipes.images", "train_images"),
}


def training_recipe(cfg: Any) -> Callable[..., dict[str, Any]]:
    """The recipe that trains this config's model family (all take the same arguments: `cfg`,
    `resume`, `overwrite`, `stop_after_steps`, `start_if_nothing`, `on_eval`, and return
    eval.json's content). Multi-task configs (`heads:`) are classifier heads."""
    import importlib

    from tailorml.tasks import find_task
    from tailorml.tasks.base import SEQUENCE_CLASSIFIER

    family = SEQUENCE_CLASSIFIER if cfg.heads is not None else find_task(cfg.task.type).family
    if family != SEQUENCE_CLASSIFIER and cfg.train.contrastive is True:
        from tailorml.errors import ConfigError
        from tailorml.train.contrastive import other_family

        raise ConfigError(other_family(f"a {family} ({cfg.task.type})"))
    module, name = TRAINERS[family]
    recipe: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), name)
    return recipe
