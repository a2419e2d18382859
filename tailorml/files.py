"""Atomic file writes: a reader (or a crash) never sees half a file.

Everything is written to a temporary file next to the target and renamed over it; a rename within
one folder is atomic on POSIX, so the target holds either the old content or the new.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def writable(path: str | Path, flag: str = "-o") -> Path:
    """`path` as a file to write, or a clear error: not a folder, and its folder exists."""
    from tailorml.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder. Give a file path, e.g. {path}/out.jsonl.")
    if not path.parent.is_dir():
        raise ConfigError(
            f"{flag} {path}: the folder {path.parent} does not exist. Create it first "
            f"(mkdir -p {path.parent}) or write elsewhere."
        )
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_json(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON (one trailing newline)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_jsonl(path: str | Path, items: Iterable[Any]) -> int:
    """One JSON object a line, streamed to the temp file (items may be a generator); returns the
    count. If producing an item fails, the target is left untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for item in items:
                fh.write(json.dumps(item, ensure_ascii=False) + "\n")
                n += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def cache_dir() -> Path:
    """Where packaged models unpacked or converted on first use are kept:
    `$TAILORML_CACHE_DIR`, else `$XDG_CACHE_HOME/tailorml`, else `~/.cache/tailorml`."""
    if os.environ.get("TAILORML_CACHE_DIR"):
        return Path(os.environ["TAILORML_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tailorml"
