"""The unlabeled corpus of a pretraining run: `pretrain.corpus` entries expanded to files, and
each file read as a stream of documents (never whole into memory).

    .txt       documents are paragraphs (blocks of lines between blank lines)
    .jsonl     one document per line, from `pretrain.text_column`
    .csv       one document per row, from `pretrain.text_column`
    .parquet   one document per row, from `pretrain.text_column` (read in record batches)

A file that cannot be read, or that is not UTF-8, is an error naming the file (and the line),
not a silent skip: a corpus with an undecodable file is usually the wrong file.
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tailorml.errors import DataError

EXTENSIONS = (".txt", ".jsonl", ".csv", ".parquet")
MAX_DOC_CHARS = 1_000_000  # a .txt paragraph longer than this is cut (bounded memory)


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    weight: float
    source: int  # index of the `pretrain.corpus` entry it came from


def expand_corpus(entries: list[Any], problems: list[str] | None = None) -> list[CorpusFile]:
    """Every file the corpus entries name (folders: their corpus files, recursively; globs:
    their matches), in a stable order; one DataError listing every entry that names nothing
    (or, given `problems`, those added to it and the files found returned)."""
    files: list[CorpusFile] = []
    collect = problems is not None
    problems = problems if problems is not None else []
    if not entries:
        raise DataError("`pretrain.corpus` is empty. Give at least one file, folder or glob.")
    for i, entry in enumerate(entries):
        raw, weight = (entry, 1.0) if isinstance(entry, str) else (entry.path, entry.weight)
        key = f"`pretrain.corpus[{i}]` = {raw!r}"
        path = Path(raw).expanduser()
        if any(ch in raw for ch in "*?["):
            found = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
            found = [p for p in found if p.is_file() and p.suffix in EXTENSIONS]
            if not found:
                problems.append(f"{key} matches no {'/'.join(EXTENSIONS)} file.")
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in EXTENSIONS)
            if not found:
                problems.append(f"{key} is a folder with no {'/'.join(EXTENSIONS)} file in it.")
        elif path.is_file():
            found = [path]
            if path.suffix not in EXTENSIONS:
                problems.append(
                    f"{key}: unsupported file type {path.suffix!r}. Give "
                    f"{', '.join(EXTENSIONS)} files."
                )
                found = []
        else:
            found = []
            problems.append(f"{key}: no such file or folder. Check the path.")
        files += [CorpusFile(p, float(weight), i) for p in found]
    if problems and not collect:
        raise DataError(problems)
    return files


def iter_documents(path: Path, text_column: str = "text") -> Iterator[str]:
    """The non-empty documents of one corpus file, streamed. DataError names the file (and
    line) when it cannot be read or decoded, or lacks the text column."""
    try:
        if path.suffix == ".parquet":
            yield from _parquet(path, text_column)
            return
        with path.open("r", encoding="utf-8", newline="" if path.suffix == ".csv" else None) as fh:
            if path.suffix == ".txt":
                yield from _paragraphs(fh)
            elif path.suffix == ".jsonl":
                yield from _jsonl(fh, path, text_column)
            else:
                yield from _csv(fh, path, text_column)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start} of a read chunk cannot be decoded). "
            "Convert the file to UTF-8, or remove it from `pretrain.corpus`."
        ) from None
    except OSError as exc:
        raise DataError(
            f"{path}: cannot be read ({exc.strerror or exc}). Fix its permissions or remove it "
            "from `pretrain.corpus`."
        ) from None


def _paragraphs(fh: Any) -> Iterator[str]:
    lines: list[str] = []
    size = 0
    for line in fh:
        if line.strip():
            lines.append(line.rstrip("\n"))
            size += len(line)
            if size < MAX_DOC_CHARS:
                continue
        if lines:
            yield "\n".join(lines)
            lines, size = [], 0
    if lines:
        yield "\n".join(lines)


def _missing_column(path: Path, column: str, have: list[str]) -> DataError:
    return DataError(
        f"{path}: no column {column!r} (from `pretrain.text_column`); it has {have}. Set "
        "`pretrain.text_column` to the column holding the text."
    )


def _jsonl(fh: Any, path: Path, column: str) -> Iterator[str]:
    for n, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError(f"{path}:{n}: not a JSON object. Fix or remove the line.") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: not a JSON object. Fix or remove the line.")
        if column not in row:
            raise _missing_column(path, column, list(row))
        text = row[column]
        if isinstance(text, str) and text.strip():
            yield text


def _csv(fh: Any, path: Path, column: str) -> Iterator[str]:
    reader = csv.DictReader(fh)
    if reader.fieldnames is None:
        return
    if column not in reader.fieldnames:
        raise _missing_column(path, column, list(reader.fieldnames))
    for row in reader:
        text = row.get(column)
        if text and text.strip():
            yield text


def _parquet(path: Path, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path))
    except Exception as exc:  # pyarrow raises its own types for damaged files
        raise DataError(f"{path}: not a readable parquet file ({exc}).") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise _missing_column(path, column, names)
    for batch in pf.iter_batches(columns=[column], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text
