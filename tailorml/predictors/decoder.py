"""Continuous batching for a causal LM: many generations share every forward pass, and a new one
joins the running batch at the next step instead of waiting for the batch to finish.

    engine = DecodeEngine(gen.model, gen.tokenizer, max_batch_size=16)
    engine.start()
    seq = Sequence(gen.tokenizer("...")["input_ids"], Sampling(max_new_tokens=64), on_event)
    engine.submit(seq)       # on_event(delta_text, None) per chunk, then on_event("", Done)
    engine.close()           # finishes what is running, then stops

One thread owns the model. Each turn of its loop it (1) prefills the sequences that arrived
(their prompts left-padded into one forward pass, keeping only the last position's logits), (2)
merges their KV cache into the running batch's (the shorter cache padded on the left, masked
out), (3) runs one decode step for every running sequence, (4) sends each its new text and
drops those that ended (end of turn, a stop string, `max_new_tokens`, or cancelled by their
client), trimming cache columns no running sequence needs. Position ids count each sequence's
own tokens, so a sequence's output does not depend on its neighbours (up to float rounding).

Text is streamed as it becomes safe to show: held back while the last token ends inside a
multi-byte character, or while the tail could still turn into a stop string.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Sampling:
    """How one sequence picks its tokens. temperature 0 = greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Done:
    """How a sequence ended: its whole output (cut before a stop string), token counts,
    `finish_reason` (eos | stop | length | cancelled) and its time to first token."""

    output: str
    tokens: int
    prompt_tokens: int
    finish_reason: str
    ttft_s: float


Event = Callable[[str, "Done | None"], None]


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    sampling: Sampling
    on_event: Event  # called from the engine thread: (text delta, None) ... ("", Done)
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already sent
    text: str = ""
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    cancelled: bool = False  # set from any thread; the engine drops it at its next step
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        self.cancelled = True


class EngineClosed(Exception):
    """The engine is shutting down and takes no new sequences."""


class DecodeEngine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int = 16,
        max_prefill_tokens: int = 4096,
        on_step: Callable[[int, int, float], None] | None = None,
    ):
        """`on_step(running, new_tokens, seconds)` after each decode step (metrics)."""
        self.model = model
        self.tok = tokenizer
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.on_step = on_step
        self.eos = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None
        # The running batch: sequences, KV cache, attention mask over the cache, next position
        # and last token of each row.
        self._seqs: list[Sequence] = []
        self._admitting: list[Sequence] = []  # taken from the queue, being prefilled
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._pos: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        self.steps = 0
        self.tokens = 0

    # ---------------------------------------------------------------- called from any thread

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._seqs)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tailorml-decode", daemon=True)
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        with self._cv:
            if self._closing:
                raise EngineClosed("the service is shutting down")
            if seq.sampling.seed is not None:
                seq.generator = torch.Generator().manual_seed(seq.sampling.seed)
            self._waiting.append(seq)
            self._cv.notify()

    def close(self, timeout: float | None = None) -> None:
        """Finish every sequence already submitted, then stop the thread."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---------------------------------------------------------------- the engine thread

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._cv:
                        while not self._waiting and not self._seqs and not self._closing:
                            self._cv.wait()
                        if self._closing and not self._waiting and not self._seqs:
                            return
                        room = self.max_batch_size - len(self._seqs)
                        new = self._admit(room)
                    if new:
                        self._admitting = new
                        self._prefill(new)
                        self._admitting = []
                    if self._seqs:
                        self._step()
        except BaseException as exc:  # the model failed: end every sequence, refuse new ones
            self.failure = exc
            with self._cv:
                self._closing = True
                # (a sequence may be in two of these lists if the failure came mid-join)
                left = list(dict.fromkeys(self._admitting + self._seqs + list(self._waiting)))
                self._waiting.clear()
            self._seqs, self._admitting = [], []
            for seq in left:
                seq.on_event("", self._done(seq, "error"))
            raise

    def _admit(self, room: int) -> list[Sequence]:
        """Take waiting sequences (dropping cancelled ones) up to `room` and the prefill budget
        (the first always fits)."""
        new: list[Sequence] = []
        budget = self.max_prefill_tokens
        while self._waiting and len(new) < room:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                seq.on_event("", self._done(seq, "cancelled"))
                continue
            longest = max([len(s.prompt_ids) for s in new] + [len(seq.prompt_ids)])
            if new and longest * (len(new) + 1) > budget:
                break
            new.append(self._waiting.popleft())
        return new

    def _prefill(self, new: list[Sequence]) -> None:
        from transformers import DynamicCache

        width = max(len(s.prompt_ids) for s in new)
        ids = torch.full((len(new), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, s in enumerate(new):
            n = len(s.prompt_ids)
            ids[i, width - n :] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[i, width - n :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        first = self._sample(out.logits[:, -1, :], new)
        self._join(new, cache, mask, pos[:, -1] + 1, first)
        self._advance(new, first)

    def _join(
        self,
        new: list[Sequence],
        cache: Any,
        mask: torch.Tensor,
        pos: torch.Tensor,
        last: torch.Tensor,
    ) -> None:
        """Add prefilled rows to the running batch, padding the shorter cache on the left."""
        if not self._seqs:
            self._seqs, self._cache, self._mask, self._pos, self._last = (
                list(new), cache, mask, pos, last
            )  # fmt: skip
            return
        assert self._mask is not None and self._pos is not None and self._last is not None
        have, got = self._mask.shape[1], mask.shape[1]
        width = max(have, got)
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            old_layer.keys = torch.cat(
                [_pad_left(old_layer.keys, width), _pad_left(new_layer.keys, width)]
            )
            old_layer.values = torch.cat(
                [_pad_left(old_layer.values, width), _pad_left(new_layer.values, width)]
            )
        self._mask = torch.cat([_pad_mask(self._mask, width), _pad_mask(mask, width)])
        self._pos = torch.cat([self._pos, pos])
        self._last = torch.cat([self._last, last])
        self._seqs += new

    def _step(self) -> None:
        assert self._mask is not None and self._pos is not None and self._last is not None
        t0 = time.perf_counter()
        n = len(self._seqs)
        self._mask = torch.cat([self._mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
        out = self.model(
            input_ids=self._last[:, None],
            attention_mask=self._mask,
            position_ids=self._pos[:, None],
            cache=self._cache,
            use_cache=True,
        )
        nxt = self._sample(out.logits[:, -1, :], self._seqs)
        self._pos = self._pos + 1
        self._last = nxt
        self.steps += 1
        self._advance(self._seqs, nxt)
        if self.on_step:
            self.on_step(n, n, time.perf_counter() - t0)

    def _sample(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> torch.Tensor:
        """One token per row: argmax for greedy rows, else temperature / top-k / top-p."""
        picked = logits.argmax(-1)
        for i, s in enumerate(seqs):
            sp = s.sampling
            if sp.temperature <= 0:
                continue
            row = logits[i].float() / sp.temperature
            if sp.top_k > 0 and sp.top_k < row.numel():
                kth = torch.topk(row, sp.top_k).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            probs = torch.softmax(row, -1)
            if sp.top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                # keep the smallest prefix whose mass reaches top_p (the first token always)
                drop = (sorted_p.cumsum(-1) - sorted_p) >= sp.top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            picked[i] = torch.multinomial(probs, 1, generator=s.generator)[0]
        return picked

    def _advance(self, seqs: list[Sequence], tokens: torch.Tensor) -> None:
        """Give each sequence its new token; send text; drop the ones that ended."""
        now = time.perf_counter()
        ended: list[int] = []
        for i, (s, t) in enumerate(zip(seqs, tokens.tolist(), strict=True)):
            if s.first_token is None:
                s.first_token = now
            reason = self._append(s, int(t))
            self.tokens += 1
            if reason is not None:
                ended.append(i)
                s.on_event("", self._done(s, reason))
        if ended and seqs is self._seqs:
            self._drop(ended)
        elif ended:  # rows just prefilled, already joined to the running batch
            base = len(self._seqs) - len(seqs)
            self._drop([base + i for i in ended])
        # cancelled rows (client gone, timeout) leave too
        gone = [i for i, s in enumerate(self._seqs) if s.cancelled]
        if gone:
            for i in gone:
                self._seqs[i].on_event("", self._done(self._seqs[i], "cancelled"))
            self._drop(gone)

    def _append(self, s: Sequence, token: int) -> str | None:
        """Add one token; send what text is safe to send; the reason it ended, or None."""
        if s.cancelled:
            return "cancelled"
        if token in self.eos:
            s.ids.append(token)
            self._flush(s, final=True)
            return "eos"
        s.ids.append(token)
        text = self.tok.decode(s.ids, skip_special_tokens=True)
        stops = s.sampling.stop
        for stop in stops:
            at = text.find(stop, max(0, s.sent - len(stop)))
            if stop and at >= 0:
                s.text = text[:at]
                self._flush(s, final=True)
                return "stop"
        s.text = text
        if len(s.ids) >= s.sampling.max_new_tokens:
            self._flush(s, final=True)
            return "length"
        self._flush(s, final=False)
        return None

    def _flush(self, s: Sequence, final: bool) -> None:
        end = len(s.text) if final else _safe_end(s.text, s.sampling.stop)
        if end > s.sent:
            s.on_event(s.text[s.sent : end], None)
            s.sent = end

    def _done(self, s: Sequence, reason: str) -> Done:
        ttft = (s.first_token or time.perf_counter()) - s.submitted
        text = s.text if reason != "cancelled" else s.text[: s.sent]
        return Done(text, len(s.ids), len(s.prompt_ids), reason, ttft)

    def _drop(self, rows: list[int]) -> None:
        assert self._mask is not None and self._pos is not None and self._last is not None
        keep_rows = [i for i in range(len(self._seqs)) if i not in set(rows)]
        self._seqs = [self._seqs[i] for i in keep_rows]
        if not self._seqs:
            self._cache = self._mask = self._pos = self._last = None
            return
        keep = torch.tensor(keep_rows, dtype=torch.long)
        mask = self._mask[keep]
        # cache columns that no remaining row attends to (its left padding) are cut
        start = int(mask.any(0).long().argmax())
        self._mask = mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[keep, :, start:, :]
            layer.values = layer.values[keep, :, start:, :]
        self._pos = self._pos[keep]
        self._last = self._last[keep]


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, heads, length, dim) -> (batch, heads, width, dim), zeros on the left."""
    short = width - t.shape[2]
    if short == 0:
        return t
    return torch.nn.functional.pad(t, (0, 0, short, 0))


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))


def _safe_end(text: str, stops: Seq[str]) -> int:
    """How much of `text` can be sent now: not a trailing replacement character (a multi-byte
    character still incomplete), nor a tail that may be the start of a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    longest = max((len(s) for s in stops), default=0)
    for k in range(min(longest - 1, end), 0, -1):
        tail = text[end - k : end]
        if any(s.startswith(tail) for s in stops):
            return end - k
    return end


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(e) for e in eos)
    return ids


@contextlib.contextmanager
def running(engine: DecodeEngine) -> Any:
    """`with running(engine):` start, and close on the way out."""
    engine.start()
    try:
        yield engine
    finally:
        engine.close()
