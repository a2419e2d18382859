"""Token shards: the corpus tokenized once into memory-mapped files, and blocks read from them.

    CACHE/<key>/index.json           files, documents and tokens per split, dtype, separator
    CACHE/<key>/<file>-<split>.bin   the split's token ids (uint16, or uint32 for vocabularies
                                     over 65,535), documents joined by the separator token

`key` hashes every corpus file's (path, size, mtime), the tokenizer's fingerprint and the
settings that change the tokens (separator, held-out share, text column): a second run on the
same corpus and tokenizer, or a resumed one, reuses the shards. The folder is written under a
temporary name and renamed into place, so a crash never leaves a half cache, and two runs
writing the same key at once keep one copy.

Held-out documents: a document goes to the eval split when a hash of its text falls below
`eval_fraction` (stable whatever the file order, and duplicates land on the same side).
Blocks are `span` consecutive tokens of one file's split (the tail shorter than a block is
dropped and counted); reading one copies only its tokens out of the memory map, so memory
stays bounded by the batch, not the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.data.corpus import CorpusFile, iter_documents
from tailorml.errors import DataError

VERSION = 1
SPLITS = ("train", "eval")
DOC_BATCH = 512  # documents tokenized per call (bounded memory while writing)


def shard_key(files: list[CorpusFile], tokenizer_fingerprint: str, settings: dict[str, Any]) -> str:
    parts = []
    for f in files:
        st = f.path.stat()
        parts.append([str(f.path.resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps(
        {"v": VERSION, "files": parts, "tok": tokenizer_fingerprint, "settings": settings},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def held_out(text: str, eval_fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return h / 2**64 < eval_fraction


@dataclass
class Shards:
    folder: Path
    index: dict[str, Any]
    hit: bool  # found in the cache (not written by this call)
    _maps: dict[str, np.memmap] = field(default_factory=dict, repr=False)

    @property
    def files(self) -> list[dict[str, Any]]:
        return list(self.index["files"])

    def tokens(self, split: str) -> int:
        return sum(int(f["tokens"][split]) for f in self.files)

    def documents(self, split: str) -> int:
        return sum(int(f["documents"][split]) for f in self.files)

    def memmap(self, j: int, split: str) -> np.memmap | np.ndarray:
        name = self.files[j]["bins"][split]
        if name not in self._maps:
            if int(self.files[j]["tokens"][split]) == 0:
                return np.zeros(0, dtype=self.index["dtype"])
            self._maps[name] = np.memmap(self.folder / name, dtype=self.index["dtype"], mode="r")
        return self._maps[name]

    def blocks(self, split: str, span: int) -> Blocks:
        return Blocks(self, split, span)


class Blocks:
    """The `span`-token blocks of one split, numbered across files (file order), read lazily."""

    def __init__(self, shards: Shards, split: str, span: int):
        self.shards, self.split, self.span = shards, split, span
        per_file = [int(f["tokens"][split]) // span for f in shards.files]
        self.per_file = np.asarray(per_file, dtype=np.int64)
        self.ends = np.cumsum(self.per_file)  # block i lies in the first file with ends > i
        self.dropped = sum(int(f["tokens"][split]) % span for f in shards.files)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def file_of(self, i: int) -> int:
        return int(np.searchsorted(self.ends, i, side="right"))

    def __getitem__(self, i: int) -> np.ndarray:
        """Block `i` as int64 ids, shape (span,): a copy of `span` tokens from the map."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = self.file_of(i)
        first = int(self.ends[j] - self.per_file[j])
        start = (i - first) * self.span
        return np.asarray(self.shards.memmap(j, self.split)[start : start + self.span], np.int64)

    def sources(self, files: list[CorpusFile]) -> np.ndarray:
        """The corpus entry of every block, shape (len,)."""
        return np.repeat(np.asarray([f.source for f in files], np.int64), self.per_file)


def build_shards(
    files: list[CorpusFile],
    tokenizer: Any,
    separator: int,
    eval_fraction: float,
    text_column: str,
    cache_root: Path,
    fingerprint: str,
    progress: Any = None,
) -> Shards:
    """The shards of `files` under `cache_root` (from the cache when they exist)."""
    settings = {"sep": separator, "eval_fraction": eval_fraction, "text_column": text_column}
    key = shard_key(files, fingerprint, settings)
    folder = cache_root / key
    if (folder / "index.json").is_file():
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        return Shards(folder, index, hit=True)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_root / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    dtype = "uint16" if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else "uint32"
    entries: list[dict[str, Any]] = []
    try:
        for j, f in enumerate(files):
            if progress is not None:
                progress(f"tokenizing {f.path} ({j + 1}/{len(files)})")
            bins = {s: f"{j:05d}-{s}.bin" for s in SPLITS}
            docs = dict.fromkeys(SPLITS, 0)
            toks = dict.fromkeys(SPLITS, 0)
            handles = {s: (tmp / bins[s]).open("wb") for s in SPLITS}
            try:
                for batch in _batches(iter_documents(f.path, text_column), DOC_BATCH):
                    ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
                    for text, doc in zip(batch, ids, strict=True):
                        s = "eval" if held_out(text, eval_fraction) else "train"
                        arr = np.asarray([*doc, separator], dtype=dtype)
                        handles[s].write(arr.tobytes())
                        docs[s] += 1
                        toks[s] += len(arr)
            finally:
                for h in handles.values():
                    h.close()
            entries.append(
                {"path": str(f.path), "source": f.source, "bins": bins, "documents": docs,
                 "tokens": toks}  # fmt: skip
            )
        index = {"version": VERSION, "dtype": dtype, "separator": separator, "files": entries,
                 "vocab_size": len(tokenizer), **settings}  # fmt: skip
        (tmp / "index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        if folder.exists():  # another run finished the same shards first: keep its copy
            shutil.rmtree(tmp)
        else:
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if sum(sum(e["documents"].values()) for e in entries) == 0:
        raise DataError(
            "`pretrain.corpus`: the files hold no text (every document is empty). Check the "
            "files and `pretrain.text_column`."
        )
    return Shards(folder, index, hit=False)


def _batches(items: Iterator[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for x in items:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def weighted_units(blocks: Blocks, files: list[CorpusFile], weights: list[float], seed: int) -> np.ndarray:
    """The training units of an epoch: block ids, each corpus entry's blocks repeated by its
    weight (2 = twice; 0.5 = a fixed, seeded half). Fixed for the run, so the shared loop's
    (seed, epoch) order and exact resume apply unchanged."""
    ids = np.arange(len(blocks), dtype=np.int64)
    if all(w == 1.0 for w in weights):
        return ids
    src = blocks.sources(files)
    rng = np.random.default_rng([seed, 17])
    parts = []
    for k, w in enumerate(weights):
        mine = ids[src == k]
        whole, frac = int(w), w - int(w)
        parts += [mine] * whole
        if frac > 0 and len(mine):
            parts.append(np.sort(rng.choice(mine, size=round(frac * len(mine)), replace=False)))
    return np.concatenate(parts) if parts else ids[:0]


def eval_block_ids(n: int, cap: int | None) -> np.ndarray:
    """Evenly spaced held-out blocks (all when `cap` is None or larger)."""
    if cap is None or n <= cap:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))
