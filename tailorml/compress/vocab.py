"""Vocabulary trimming: keep the WordPiece tokens the task's training text uses (plus a margin and
every special token), renumber them, and gather the matching rows of the word-embedding matrix.

Half of the packaged MiniLM's parameters are its 30,522 word embeddings; a task's text uses a
fraction of them. What is kept:

- every special token (the tokenizer's added tokens: [PAD], [UNK], [CLS], [SEP], [MASK]);
- every single-character piece (`a` and `##a`): a word the kept vocabulary cannot cover whole
  still splits into characters instead of becoming [UNK];
- the first `margin` ids of the base vocabulary ([unusedN] placeholders left out): BERT's
  WordPiece vocabulary lists its words by frequency after the characters, so these are the most
  frequent words of the pre-training corpus;
- every token of the training texts (tokenized by the untrimmed tokenizer, untruncated).

WordPiece matches the longest piece in the vocabulary first; a subset that keeps every piece of
a text tokenizes that text exactly as before, so on the training texts the trimmed model's
logits are the untrimmed model's. Held-out text can change: a piece that was dropped splits into
shorter ones (or [UNK]), which `heldout_stats` counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tailorml.errors import ConfigError

UNUSED_PREFIX = "[unused"
# Files rewritten for the kept vocabulary; the other tokenizer files are copied as they are.
REWRITTEN = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def load_tokenizer_doc(folder: Path) -> dict[str, Any]:
    """tokenizer.json of `folder`, checked to be a WordPiece model (the only kind trimmed)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(
            f"{folder}: vocabulary trimming needs a fast tokenizer (tokenizer.json); this model "
            "folder has none. Leave out the trimmed variants."
        )
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    kind = (doc.get("model") or {}).get("type")
    if kind != "WordPiece":
        raise ConfigError(
            f"{folder}: vocabulary trimming supports WordPiece tokenizers (BERT-style); this one "
            f"is {kind}. Leave out the trimmed variants."
        )
    return doc


def _encode_all(doc: dict[str, Any], texts: list[str], pairs: list[str] | None) -> list[Any]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(doc))
    tok.no_padding()
    tok.no_truncation()
    items: list[Any] = list(zip(texts, pairs, strict=True)) if pairs is not None else texts
    return tok.encode_batch(items)


def kept_ids(
    doc: dict[str, Any], texts: list[str], pairs: list[str] | None, margin: int
) -> tuple[list[int], dict[str, int]]:
    """Sorted ids of the base vocabulary to keep, and how many each rule contributed."""
    vocab: dict[str, int] = doc["model"]["vocab"]
    prefix = doc["model"].get("continuing_subword_prefix", "##")
    special = {int(t["id"]) for t in doc.get("added_tokens", [])}
    chars = {
        i
        for t, i in vocab.items()
        if len(t) == 1 or (t.startswith(prefix) and len(t) == len(prefix) + 1)
    }
    first = {i for t, i in vocab.items() if i < margin and not t.startswith(UNUSED_PREFIX)}
    used: set[int] = set()
    for enc in _encode_all(doc, texts, pairs):
        used.update(enc.ids)
    keep = sorted(special | chars | first | used)
    counts = {
        "special": len(special),
        "characters": len(chars),
        "margin": len(first),
        "used_by_train": len(used),
        "kept": len(keep),
        "base": len(vocab),
    }
    return keep, counts


def trim_tokenizer_doc(doc: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    """tokenizer.json whose vocabulary is `keep` (old ids), renumbered 0..k-1 in the old order;
    special tokens, the post-processor's ids and the padding id follow."""
    new_id = {old: new for new, old in enumerate(keep)}
    out = json.loads(json.dumps(doc))  # a deep copy
    vocab: dict[str, int] = doc["model"]["vocab"]
    out["model"]["vocab"] = {t: new_id[i] for t, i in vocab.items() if i in new_id}
    for tok in out.get("added_tokens", []):
        tok["id"] = new_id[int(tok["id"])]
    post = out.get("post_processor")
    if post:
        for p in post.get("processors", [post]):  # a Sequence of processors, or one
            kind = p.get("type")
            if kind == "TemplateProcessing":
                for spec in p.get("special_tokens", {}).values():
                    spec["ids"] = [new_id[int(i)] for i in spec["ids"]]
            elif kind in ("BertProcessing", "RobertaProcessing"):
                for key in ("sep", "cls"):
                    p[key] = [p[key][0], new_id[int(p[key][1])]]
    if out.get("padding"):
        out["padding"]["pad_id"] = new_id[int(out["padding"]["pad_id"])]
    return out


def trim_folder(
    src: Path, dst: Path, texts: list[str], pairs: list[str] | None, margin: int
) -> dict[str, Any]:
    """Write the trimmed model (weights, config, tokenizer) of model folder `src` into `dst`;
    returns the counts (kept, base, per rule). task.json is the caller's."""
    import torch

    from tailorml.compress.folders import copy_tokenizer
    from tailorml.models.classifier import load_classifier

    doc = load_tokenizer_doc(src)
    keep, counts = kept_ids(doc, texts, pairs, margin)
    new_doc = trim_tokenizer_doc(doc, keep)
    model = load_classifier(src)
    emb = model.get_input_embeddings()
    if emb.weight.shape[0] != len(doc["model"]["vocab"]):
        raise ConfigError(
            f"{src}: the model has {emb.weight.shape[0]} word embeddings but its tokenizer "
            f"{len(doc['model']['vocab'])} tokens; vocabulary trimming needs them to match."
        )
    new_id = {old: new for new, old in enumerate(keep)}
    pad = model.config.pad_token_id
    new_pad = new_id.get(int(pad)) if pad is not None else None
    rows = emb.weight.detach()[torch.tensor(keep, dtype=torch.long)].clone()
    trimmed = torch.nn.Embedding(len(keep), rows.shape[1], padding_idx=new_pad)
    with torch.no_grad():
        trimmed.weight.copy_(rows)
    model.set_input_embeddings(trimmed)
    model.config.vocab_size = len(keep)
    model.config.pad_token_id = new_pad
    model.config.tailorml_trimmed_vocab = {"kept": len(keep), "base": counts["base"]}
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dst), safe_serialization=True)
    copy_tokenizer(src, dst)
    (dst / "tokenizer.json").write_text(json.dumps(new_doc, ensure_ascii=False), encoding="utf-8")
    inv = {i: t for t, i in new_doc["model"]["vocab"].items()}
    (dst / "vocab.txt").write_text(
        "".join(inv[i] + "\n" for i in range(len(keep))), encoding="utf-8"
    )
    _trim_tokenizer_config(dst / "tokenizer_config.json", new_id)
    for name in ("added_tokens.json",):  # ids of added tokens, if the tokenizer wrote them
        path = dst / name
        if path.is_file():
            added = json.loads(path.read_text(encoding="utf-8"))
            path.write_text(json.dumps({t: new_id[int(i)] for t, i in added.items()}))
    return counts


def _trim_tokenizer_config(path: Path, new_id: dict[int, int]) -> None:
    """tokenizer_config.json keys its added tokens by id (`added_tokens_decoder`)."""
    if not path.is_file():
        return
    cfg = json.loads(path.read_text(encoding="utf-8"))
    dec = cfg.get("added_tokens_decoder")
    if isinstance(dec, dict):
        cfg["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in dec.items()}
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")


def heldout_stats(
    base: Path, trimmed: Path, texts: list[str], pairs: list[str] | None
) -> dict[str, Any]:
    """On held-out texts: tokens that map to [UNK] with the trimmed tokenizer (and with the base
    one), and the share of texts whose tokens changed (compared as token strings)."""
    base_doc, trim_doc = load_tokenizer_doc(base), load_tokenizer_doc(trimmed)
    unk = base_doc["model"].get("unk_token", "[UNK]")
    before = _encode_all(base_doc, texts, pairs)
    after = _encode_all(trim_doc, texts, pairs)
    tokens = sum(len(e.tokens) for e in before)
    changed = sum(a.tokens != b.tokens for a, b in zip(after, before, strict=True))
    return {
        "texts": len(texts),
        "tokens": tokens,
        "unk_tokens": _count(after, unk),
        "unk_tokens_base": _count(before, unk),
        "texts_changed": changed,
        "texts_changed_share": round(changed / len(texts), 6) if texts else 0.0,
    }


def _count(encs: Iterable[Any], token: str) -> int:
    return sum(t == token for e in encs for t in e.tokens)
