"""`tailor finwatch train`: the topic and the sentiment model, each through the fine-tuning engine.

Two models on the same base encoder, not one encoder with two heads: the engine trains one
classification head per run, and the two bundled sets are disjoint tweet collections (no tweet
has both a topic and a sentiment label), so a shared encoder would need alternating-batch
multi-task training the engine does not have yet. Two models cost two encoder passes per event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tailorml.config.load import apply_overrides, read_yaml, validate_mapping
from tailorml.errors import ConfigError


def train_both(
    config: Path, overrides: list[str], overwrite: bool = False, only: list[str] | None = None
) -> dict[str, Any]:
    from tailorml.recipes.finetune import finetune

    raw = apply_overrides(read_yaml(config), overrides)
    out: dict[str, Any] = {}
    problems: list[str] = []
    cfgs: dict[str, Any] = {}
    for head in only or ["topic", "sentiment"]:
        if head not in raw:
            problems.append(
                f"`{head}` is missing in {config}: give a run config for the {head} model."
            )
            continue
        cfg, probs = validate_mapping(raw[head])
        problems += [f"{head}: {p}" for p in probs]
        cfgs[head] = cfg
    if problems:
        raise ConfigError(problems)
    for head, cfg in cfgs.items():
        res = finetune(cfg, overwrite=overwrite)
        out[head] = {
            "model": str(Path(cfg.output_dir) / "model"),
            **{
                split: {k: res[split].get(k) for k in ("accuracy", "macro_f1")}
                for split in ("eval", "test")
            },
        }
    return out
