"""Shapes and special tokens of models pretrained from scratch (no torch import: the config
checks use them)."""

from __future__ import annotations

from typing import Any

# The packaged pretrained encoders, by `model.base` name (models/base.py resolves them).
ENCODERS = ("minilm", "mpnet")

# (layers, hidden, heads, intermediate). Parameter counts with an 8k vocabulary (tied output):
# tiny ~0.6M, mini ~5M, small ~23M; base is BERT-base / GPT-2-small sized (~110-125M with a
# 30-50k vocabulary).
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (2, 64, 2, 128),
    "mini": (4, 256, 4, 1024),
    "small": (6, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
}

# The special tokens a trained tokenizer gets, by objective (role -> token).
SPECIALS: dict[str, dict[str, str]] = {
    "mlm": {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    },
    "clm": {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
}
MIN_PIECES = 64  # room for ordinary pieces beyond the special tokens (and bytes, for BPE)


def init_shape(init: dict[str, Any]) -> dict[str, int] | None:
    """layers/hidden/heads/intermediate of a `model.init` mapping: its preset, overridden by the
    keys it sets (None when the preset is unknown: reported by the schema)."""
    preset = PRESETS.get(str(init.get("preset") or "small"))
    if preset is None:
        return None
    layers, hidden, heads, inter = preset
    hidden = int(init.get("hidden") or hidden)
    shape = {
        "layers": int(init.get("layers") or layers),
        "hidden": hidden,
        "heads": int(init.get("heads") or heads),
        "intermediate": int(
            init.get("intermediate") or (inter if not init.get("hidden") else 4 * hidden)
        ),
    }
    return shape


def min_vocab_size(kind: str, objective: str) -> int:
    specials = len(SPECIALS.get(objective, SPECIALS["mlm"]))
    return specials + MIN_PIECES + (256 if kind == "bpe" else 0)
