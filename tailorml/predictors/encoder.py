"""Tokenize for inference without importing torch.

A model folder's `tokenizer.json` runs on the `tokenizers` library directly (what transformers'
fast tokenizers wrap), with the truncation transformers applies for `truncation=True,
max_length=N`: longest-first, right side, special tokens included. The ids equal
`AutoTokenizer(...)(texts, pairs, truncation=True, max_length=N)` (a test checks it). A folder
without tokenizer.json (a slow, e.g. sentencepiece-only tokenizer) falls back to AutoTokenizer,
which imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class TextEncoder:
    def __init__(self, folder: Path, max_length: int):
        self.max_length = max_length
        self._fast: Any = None
        self._auto: Any = None
        self._full: Any = None
        path = folder / "tokenizer.json"
        if path.is_file():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(path))
            tok.no_padding()  # padding is ours: per batch, to its longest row
            tok.enable_truncation(max_length, strategy="longest_first", direction="right")
            self._fast = tok
            self.pad_id = _pad_id(folder, tok)
        else:
            from transformers import AutoTokenizer

            self._auto = AutoTokenizer.from_pretrained(str(folder))
            self.pad_id = int(self._auto.pad_token_id or 0)

    def encode(
        self, texts: list[str], pairs: list[str] | None = None
    ) -> tuple[list[list[int]], list[list[int]]]:
        """(input ids, token type ids) per text, truncated to max_length, unpadded."""
        if self._fast is not None:
            items: list[Any] = list(zip(texts, pairs, strict=True)) if pairs is not None else texts
            encs = self._fast.encode_batch(items)
            return [e.ids for e in encs], [e.type_ids for e in encs]
        out = self._auto(texts, pairs, truncation=True, max_length=self.max_length)
        ids = out["input_ids"]
        types = out.get("token_type_ids") or [[0] * len(x) for x in ids]
        return ids, types

    def untruncated_lengths(self, texts: list[str], pairs: list[str] | None = None) -> list[int]:
        """Token counts before truncation (to count truncated inputs)."""
        if self._fast is not None:
            if self._full is None:  # a copy without truncation: the shared one is never changed
                from tokenizers import Tokenizer

                self._full = Tokenizer.from_str(self._fast.to_str())
                self._full.no_truncation()
            items: list[Any] = list(zip(texts, pairs, strict=True)) if pairs is not None else texts
            return [len(e.ids) for e in self._full.encode_batch(items)]
        out = self._auto(texts, pairs, truncation=False, verbose=False)
        return [len(x) for x in out["input_ids"]]


def _pad_id(folder: Path, tok: Any) -> int:
    """The pad token's id, named in tokenizer_config.json or special_tokens_map.json."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if not path.is_file():
            continue
        pad = json.loads(path.read_text(encoding="utf-8")).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str) and tok.token_to_id(pad) is not None:
            return int(tok.token_to_id(pad))
    return 0
