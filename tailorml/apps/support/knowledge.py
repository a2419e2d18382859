"""The knowledge base: a folder of .md / .txt help articles, read into documents and passages.

    folder/
      card_arrival.md          id `card_arrival`, title from its first `# ` heading
      fees/atm.txt             id `fees/atm` (relative path, no extension), title `atm`

A document's text is the file without its title line. Long articles are split into passages of
at most `max_words` words at headings and blank lines (a heading travels with the paragraph
after it); every passage keeps its document's id and title, so a hit names the article.

Bad input is reported all at once (one ConfigError listing every file and its fix): a missing or
empty folder, a binary or non-UTF-8 file, two files with one id. An empty article is a warning,
not an error: it holds nothing to retrieve, so it cannot make an answer wrong, and a placeholder
file someone is still writing should not stop the assistant; it is skipped and named.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tailorml.errors import ConfigError

log = logging.getLogger("tailorml.support")

SUFFIXES = (".md", ".txt")
FIELD = "knowledge.documents"
# Word processors and PDF files put NUL bytes in their first kilobytes; UTF-8 text never does.
BINARY_PROBE = 8192


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str


@dataclass(frozen=True)
class Passage:
    doc_id: str
    passage_id: str  # `<doc_id>#<n>`, n counting from 0 within the document
    title: str
    text: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Passage:
        return cls(**{k: str(obj[k]) for k in ("doc_id", "passage_id", "title", "text")})


def load_documents(folder: str | Path, field: str = FIELD) -> list[Document]:
    """Every .md / .txt file under `folder` (recursively, sorted by id), or a ConfigError naming
    each bad file and its fix. `field` names the setting in messages."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise ConfigError(
            f"`{field}` = {str(folder)!r}: the folder does not exist. Create it and put the help "
            "articles in it as .md or .txt files, or correct the path."
        )
    if not root.is_dir():
        raise ConfigError(
            f"`{field}` = {str(folder)!r} is a file, not a folder. Point it at the folder that "
            "holds the .md / .txt articles."
        )
    files: list[Path] = []
    other: list[Path] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue  # hidden files (.DS_Store, editor swap files) and folders
        (files if path.suffix.lower() in SUFFIXES else other).append(path)
    if not files:
        found = f" It holds only {_names(other, root)}." if other else " It is empty."
        raise ConfigError(
            f"`{field}` = {str(folder)!r} has no .md or .txt articles.{found} Add the help "
            "articles as Markdown (.md) or plain text (.txt) files; convert PDF or Word files to "
            "text first."
        )
    if other:
        log.warning(
            "%s: skipped %d file(s) that are not .md or .txt: %s. Convert them to .md or .txt to "
            "include them.",
            root,
            len(other),
            _names(other, root),
        )
    problems: list[str] = []
    docs: dict[str, tuple[Path, Document]] = {}
    for path in files:
        rel = path.relative_to(root)
        text = _read_text(path, rel, problems)
        if text is None:
            continue
        doc_id = rel.with_suffix("").as_posix()
        if doc_id in docs:
            problems.append(
                f"{docs[doc_id][0].relative_to(root)} and {rel} have the same id {doc_id!r} (the "
                "path without its extension). Rename or remove one of them."
            )
            continue
        if not text.strip():
            log.warning("%s: the article %s is empty; skipped. Write it or remove it.", root, rel)
            continue
        title, body = _title(text, path.stem)
        docs[doc_id] = (path, Document(doc_id=doc_id, title=title, text=body))
    if problems:
        raise ConfigError([f"`{field}` = {str(folder)!r}: {p}" for p in problems])
    if not docs:
        raise ConfigError(
            f"`{field}` = {str(folder)!r}: every article is empty. Write the help articles into "
            "the .md / .txt files."
        )
    return [doc for _, doc in docs.values()]


def split_passages(docs: list[Document], max_words: int | None = 200) -> list[Passage]:
    """Each document as passages of at most `max_words` words (None: one passage a document).

    Blocks (a paragraph, with any heading just above it) are packed in order while they fit; a
    block longer than `max_words` is cut at sentence ends, then at words. A passage never spans
    two documents."""
    if max_words is not None and max_words < 20:
        raise ConfigError(f"max_words = {max_words} is too small for a passage. Use 20 or more.")
    out: list[Passage] = []
    for doc in docs:
        if max_words is None:
            chunks = [doc.text.strip()] if doc.text.strip() else [doc.title]
        else:
            chunks = _pack(_blocks(doc.text), max_words) or [doc.title]
        for n, chunk in enumerate(chunks):
            out.append(Passage(doc.doc_id, f"{doc.doc_id}#{n}", doc.title, chunk))
    return out


def load_passages(folder: str | Path, max_words: int | None = 200) -> list[Passage]:
    """`load_documents` then `split_passages`."""
    return split_passages(load_documents(folder), max_words)


def _read_text(path: Path, rel: Path, problems: list[str]) -> str | None:
    data = path.read_bytes()
    if b"\x00" in data[:BINARY_PROBE]:
        problems.append(
            f"{rel} is a binary file, not text (is it a PDF or Word file renamed to "
            f"{path.suffix}?). Save it as plain text or Markdown (UTF-8), or remove it."
        )
        return None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is dropped
    except UnicodeDecodeError as err:
        problems.append(
            f"{rel} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}). "
            f"Re-save it as UTF-8 (an editor's 'Save with encoding', or "
            f"`iconv -f latin1 -t utf-8 {rel} -o {rel}.new`)."
        )
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _title(text: str, stem: str) -> tuple[str, str]:
    """(title, text without the title line): the first `# ` heading, else the file name."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("# ") and line[2:].strip():
            return line[2:].strip(), "\n".join(lines[:i] + lines[i + 1 :]).strip()
    return stem, text.strip()


def _blocks(text: str) -> list[str]:
    """Paragraphs (blank-line separated); a heading line joins the paragraph after it."""
    blocks: list[str] = []
    heading: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        lines = para.split("\n")
        if all(line.lstrip().startswith("#") for line in lines):
            heading += lines  # a heading alone: attach it to what follows
            continue
        blocks.append("\n".join(heading + [para]))
        heading = []
    if heading:
        blocks.append("\n".join(heading))
    return blocks


def _pack(blocks: list[str], max_words: int) -> list[str]:
    pieces: list[str] = []
    for block in blocks:
        pieces += [block] if _count(block) <= max_words else _cut(block, max_words)
    out: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        n = _count(piece)
        if current and size + n > max_words:
            out.append("\n\n".join(current))
            current, size = [], 0
        current.append(piece)
        size += n
    if current:
        out.append("\n\n".join(current))
    return out


def _cut(block: str, max_words: int) -> list[str]:
    """A block over `max_words`: sentences packed up to the limit; a longer sentence by words."""
    units: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", block):
        words = sentence.split()
        units += [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
    out: list[str] = []
    current: list[str] = []
    for unit in units:
        if current and _count(" ".join(current + [unit])) > max_words:
            out.append(" ".join(current))
            current = []
        current.append(unit)
    if current:
        out.append(" ".join(current))
    return out


def _count(text: str) -> int:
    return len(text.split())


def _names(paths: list[Path], root: Path, most: int = 5) -> str:
    names = [p.relative_to(root).as_posix() for p in paths[:most]]
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return ", ".join(names) + more
