"""Chat data for supervised fine-tuning of a causal LM: rows -> checked chats -> token ids with
the loss mask -> packed blocks -> batches.

A row is a prompt and a response (`data.prompt_column` + `data.response_column`) or a chat
(`data.messages_column`: a list of {role, content}, roles system/user/assistant). The tokenizer's
chat template renders the chat; the model learns the assistant turns only: every other token's
label is -100 (ignored by the loss).

Packing puts several short examples in one block of at most `data.max_length` tokens. Position
ids restart at 0 for each example and no attention mask is passed: transformers then builds a
block-diagonal causal mask from the position ids (`find_packed_sequence_indices`, eager and sdpa
alike), so no token attends to another example.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tailorml.data.readers import BadRow, Table, has_surrogates, is_missing, read_table
from tailorml.errors import DataError

if TYPE_CHECKING:
    from tailorml.config.schema import DataConfig, RunConfig

ROLES = ("system", "user", "assistant")
IGNORE = -100  # label of a token the loss skips (torch's cross_entropy ignore_index)
Message = dict[str, str]


@dataclass
class Chats:
    """Checked chats of one split, each with its source line."""

    messages: list[list[Message]]
    source: str
    lines: list[int]
    bad: list[BadRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.messages)

    def subset(self, idx: Sequence[int] | np.ndarray, source: str) -> Chats:
        idx = [int(i) for i in idx]
        return Chats([self.messages[i] for i in idx], source, [self.lines[i] for i in idx])

    def prompts(self) -> list[list[Message]]:
        """Each chat up to (not including) its last assistant turn: what a model is asked."""
        return [m[: _last_assistant(m)] for m in self.messages]

    def references(self) -> list[str]:
        """The last assistant turn of each chat: the wanted answer."""
        return [m[_last_assistant(m)]["content"] for m in self.messages]


def _last_assistant(msgs: list[Message]) -> int:
    return max(i for i, m in enumerate(msgs) if m["role"] == "assistant")


@dataclass
class ChatSplits:
    train: Chats
    eval: Chats
    test: Chats
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"labels": None, "splits": {}, "notes": self.notes}
        for name in ("train", "eval", "test"):
            ch: Chats = getattr(self, name)
            out["splits"][name] = {
                "source": ch.source,
                "rows": len(ch),
                "bad_rows_skipped": len(ch.bad),
            }
        return out


# ---- reading and checking rows ----------------------------------------------------------------
def _text(value: Any) -> str | None:
    if is_missing(value) or not isinstance(value, str | int | float) or not str(value).strip():
        return None
    return str(value)


def check_messages(value: Any, column: str) -> tuple[list[Message] | None, str | None]:
    """A chat as a list of {role, content}, or the reason it is not one."""
    if isinstance(value, str):  # csv cells hold the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None, f"column {column!r} is not a JSON list of messages"
    if not isinstance(value, list) or not value:
        return None, f"column {column!r} must hold a non-empty list of {{role, content}} messages"
    out: list[Message] = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return None, f"message {j} is not an object with `role` and `content`"
        role = m["role"]
        if role not in ROLES:
            return None, f"message {j}: role {role!r} is not one of {', '.join(ROLES)}"
        content = m["content"]
        if not isinstance(content, str):
            return None, f"message {j} ({role}): `content` must be text"
        if role == "assistant" and not content.strip():
            return None, f"message {j}: empty assistant answer"
        if has_surrogates(content):
            return None, f"message {j}: undecodable bytes (not UTF-8)"
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        return None, "no assistant message: nothing to learn (add the wanted answer)"
    if out[0]["role"] == "assistant":
        return None, "message 0 is an assistant turn: start with a system or user message"
    return out, None


def row_messages(row: dict[str, Any], d: DataConfig) -> tuple[list[Message] | None, str | None]:
    """The chat of one row (from the messages column, or prompt + response), or why not."""
    if d.messages_column:
        return check_messages(row.get(d.messages_column), d.messages_column)
    prompt, response = row.get(d.prompt_column or ""), row.get(d.response_column or "")
    p, r = _text(prompt), _text(response)
    if p is None:
        return None, f"empty prompt (column {d.prompt_column!r})"
    if r is None:
        return None, f"empty response (column {d.response_column!r})"
    if has_surrogates(p) or has_surrogates(r):
        return None, "undecodable bytes (not UTF-8)"
    return [{"role": "user", "content": p}, {"role": "assistant", "content": r}], None


def chat_columns(d: DataConfig) -> dict[str, str | None]:
    """config key -> column a generation config reads."""
    if d.messages_column:
        return {"data.messages_column": d.messages_column}
    return {"data.prompt_column": d.prompt_column, "data.response_column": d.response_column}


def build_chats(table: Table, d: DataConfig, role: str) -> Chats:
    """Check every row of a table; bad rows stop the run (`data.on_bad_rows: error`, every one
    listed with file:line) or are dropped and counted (`skip`)."""
    table.require_columns(chat_columns(d))
    msgs: list[list[Message]] = []
    lines: list[int] = []
    bad = list(table.bad)
    src = str(table.path)
    for row, line in zip(table.rows, table.lines, strict=True):
        m, reason = row_messages(row, d)
        if m is None:
            bad.append(BadRow(src, line, reason or "bad row"))
            continue
        msgs.append(m)
        lines.append(line)
    if bad and d.on_bad_rows == "error":
        shown = "\n".join(f"  {b}" for b in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} bad row(s) in {src} ({role}):\n{shown}{more}\n"
            "Fix them, or set `data.on_bad_rows: skip` to drop and count them."
        )
    if not msgs:
        raise DataError(f"{src} ({role}) has no usable rows after checks. Check the columns.")
    return Chats(msgs, src, lines, bad)


def random_split(ch: Chats, fraction: float, seed: int, name: str) -> tuple[Chats, Chats]:
    """Hold out `fraction` of the chats (at least one), chosen by a seeded permutation."""
    n_hold = max(1, round(fraction * len(ch)))
    if n_hold >= len(ch):
        raise DataError(
            f"{ch.source}: {len(ch)} row(s) are too few to hold out a {name} split. Give more "
            f"rows or a `data.{name}` file."
        )
    perm = np.random.default_rng([seed, 17 if name == "test" else 23]).permutation(len(ch))
    hold, keep = sorted(perm[:n_hold]), sorted(perm[n_hold:])
    return ch.subset(keep, ch.source), ch.subset(hold, f"{ch.source} ({name} split)")


def prepare_chat_splits(cfg: RunConfig) -> ChatSplits:
    """Read and check every split of a generation config; DataError lists every problem."""
    d = cfg.data
    if d.train is None:
        raise DataError("`data.train` is not set. Give the path of the training file.")
    problems: list[str] = []
    built: dict[str, Chats] = {}
    for key in ("train", "eval", "test"):
        path = getattr(d, key)
        if path is None:
            continue
        try:
            built[key] = build_chats(read_table(path, d.limit, key=f"data.{key}"), d, key)
        except DataError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DataError(problems)
    notes: list[str] = []
    skipped = {k: len(v.bad) for k, v in built.items() if v.bad}
    if skipped:
        notes.append(f"skipped bad rows: {skipped}")
    train, seed = built["train"], cfg.train.seed
    for name, frac in (("test", d.test_fraction), ("eval", d.eval_fraction)):
        if name not in built:
            train, built[name] = random_split(train, frac, seed, name)
            notes.append(f"{name}: {frac:.0%} random split of train (seed {seed})")
    train.bad = built["train"].bad
    return ChatSplits(train, built["eval"], built["test"], notes)


# ---- tokens and the loss mask -----------------------------------------------------------------
@dataclass
class ChatEncoded:
    input_ids: list[list[int]]
    labels: list[list[int]]  # the token id where the loss applies, IGNORE elsewhere
    n_truncated: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    @property
    def n_target_tokens(self) -> int:
        return sum(sum(1 for y in ys if y != IGNORE) for ys in self.labels)


def render(tokenizer: Any, msgs: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The chat as text, and the character span of each assistant turn in it: from after the
    template's generation prompt to the end of the turn's rendering (its end-of-turn token
    included, trailing whitespace not)."""
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise DataError(
                "The tokenizer's chat template renders a chat differently from its beginning, "
                "so the assistant turns cannot be located. Use a model whose chat template "
                "renders turn by turn (as ChatML templates do)."
            )
        spans.append((len(before), len(upto.rstrip())))
    return text, spans


def encode_chats(tokenizer: Any, chats: Chats, max_length: int) -> ChatEncoded:
    """Token ids and labels of every chat. Over-long chats are cut to `max_length` and counted.
    A token is learned when it starts inside an assistant span."""
    rendered = [render(tokenizer, m) for m in chats.messages]
    enc = tokenizer(
        [t for t, _ in rendered],
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        verbose=False,
    )
    ids_out: list[list[int]] = []
    labels_out: list[list[int]] = []
    truncated = 0
    for ids, offsets, (_, spans) in zip(
        enc["input_ids"], enc["offset_mapping"], rendered, strict=True
    ):
        labels = [
            tok if any(s <= a < e for s, e in spans) else IGNORE
            for tok, (a, _b) in zip(ids, offsets, strict=True)
        ]
        if len(ids) > max_length:
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        ids_out.append(list(ids))
        labels_out.append(labels)
    return ChatEncoded(ids_out, labels_out, truncated)


# ---- packing and batches ----------------------------------------------------------------------
def pack(lengths: Sequence[int] | np.ndarray, block: int) -> list[list[int]]:
    """Example indices per block: first-fit decreasing, each block at most `block` tokens.
    Deterministic (the same blocks on every process and on resume); the loop shuffles blocks."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    blocks: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = int(lengths[i])
        for b, free in enumerate(room):
            if free >= n:
                blocks[b].append(i)
                room[b] -= n
                break
        else:
            blocks.append([i])
            room.append(block - n)
    return blocks


def collate_lm(
    enc: ChatEncoded, units: Sequence[Sequence[int]], pad_id: int, packed: bool
) -> dict[str, torch.Tensor]:
    """One row per unit (a block of examples when `packed`, else one example), right-padded to
    the longest row. Packed rows carry position ids restarting per example and no attention mask
    (the model derives the block-diagonal mask); padded rows carry an attention mask. Labels are
    the learned token ids, IGNORE elsewhere (and on each packed example's first token, whose
    prediction would come from the previous example)."""
    rows_ids, rows_lab, rows_pos = [], [], []
    for unit in units:
        ids: list[int] = []
        lab: list[int] = []
        pos: list[int] = []
        for i in unit:
            ids += enc.input_ids[i]
            lab += [IGNORE] + enc.labels[i][1:]
            pos += list(range(len(enc.input_ids[i])))
        rows_ids.append(ids)
        rows_lab.append(lab)
        rows_pos.append(pos)
    width = max(len(r) for r in rows_ids)
    n = len(rows_ids)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    # Padding gets positions 0, 1, ...: a sequence of its own that no real token attends to.
    position_ids = torch.arange(width).repeat(n, 1)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, (ids, lab, pos) in enumerate(zip(rows_ids, rows_lab, rows_pos, strict=True)):
        k = len(ids)
        input_ids[r, :k] = torch.as_tensor(ids)
        labels[r, :k] = torch.as_tensor(lab)
        position_ids[r, :k] = torch.as_tensor(pos)
        position_ids[r, k:] = torch.arange(width - k)
        mask[r, :k] = 1
    if packed:
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def units_of(enc: ChatEncoded, max_length: int, packed: bool) -> list[list[int]]:
    """The training units: packed blocks, or one example each."""
    if packed:
        return pack(enc.lengths, max_length)
    return [[i] for i in range(len(enc))]


def read_prompts(source: str) -> list[str | list[Message]]:
    """Prompts to answer from a file or `-` (stdin): plain lines of text, or JSONL rows with
    `prompt` (text) or `messages` (a chat, answered after its last turn)."""
    import io
    import sys
    from pathlib import Path

    from tailorml.data.readers import iter_text_lines

    if source == "-":
        raw: bytes | str = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
        name = "stdin"
    else:
        path = Path(source)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "not found"
            raise DataError(f"--input {source}: {what}. Give a file (or - for stdin).")
        raw, name = path.read_bytes(), source
    text = raw.decode("utf-8", errors="surrogateescape") if isinstance(raw, bytes) else raw
    out: list[str | list[Message]] = []
    problems: list[str] = []
    for line, raw_line in enumerate(io.StringIO(text.removeprefix("\ufeff")), 1):
        rows = list(iter_text_lines([raw_line]))  # a JSON object, or the line as text
        if not rows:
            continue  # a blank line
        row = rows[0]
        if "messages" in row:
            msgs, reason = _prompt_messages(row["messages"])
            if msgs is None:
                problems.append(f"{name}:{line}: {reason}")
            else:
                out.append(msgs)
            continue
        value = row.get("prompt", row.get("text"))
        if _text(value) is None:
            problems.append(
                f"{name}:{line}: no prompt (give text, or a JSON object with `prompt` or "
                "`messages`)"
            )
        elif has_surrogates(str(value)):
            problems.append(f"{name}:{line}: bytes that are not UTF-8. Save the file as UTF-8.")
        else:
            out.append(str(value))
    if problems:
        raise DataError(problems[:20])
    if not out:
        raise DataError(f"{name}: no prompts to answer.")
    return out


def _prompt_messages(value: Any) -> tuple[list[Message] | None, str | None]:
    """A chat to continue: like a training chat, but it need not hold an assistant turn."""
    if not isinstance(value, list) or not value:
        return None, "`messages` must be a non-empty list of {role, content}"
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return None, f"message {j} is not an object with `role` and text `content`"
        if m.get("role") not in ROLES:
            return None, f"message {j}: role {m.get('role')!r} is not one of {', '.join(ROLES)}"
    return [{"role": m["role"], "content": m["content"]} for m in value], None
