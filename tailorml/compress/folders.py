"""Variant folders are written to a temp folder and renamed into place: a failed or interrupted
build never leaves a half-written variant that `load_predictor` would pick up."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tailorml.tasks.folder import variant_task_json, write_task_json

# Tokenizer files copied next to every exported model (whichever the tokenizer wrote).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)


@contextmanager
def staged(final: Path) -> Iterator[Path]:
    """Yield a temp folder next to `final`; on success it replaces `final`, on error it is gone."""
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def write_task(dst: Path, info: dict[str, Any], **extra: Any) -> None:
    """task.json of a variant: the run's heads and columns plus how to run this folder."""
    write_task_json(dst, variant_task_json(info, **extra))


def folder_size(path: Path) -> int:
    """Bytes on disk of every file in a folder (model + tokenizer + metadata); a LoRA model
    folder counts its base's weights too, which it needs to run."""
    from tailorml.models.lora import base_of, is_lora_folder

    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if is_lora_folder(path) and not base_of(path).is_relative_to(path):
        size += sum(p.stat().st_size for p in base_of(path).glob("*.safetensors"))
    return size
