"""Dynamic micro-batching: many small requests become a few model calls.

Requests put their inputs in one bounded queue. A single loop takes up to `max_batch_size` inputs,
waiting at most `max_wait_ms` after the oldest one arrived for others to join, sorts them by token
length, splits them where padding would waste too much, and runs the model in one worker thread (so
the event loop keeps accepting requests while the model computes). While a batch runs, new inputs
queue up, so under load batches fill without waiting at all.

A full queue raises `QueueFull` (the app answers 429); inputs whose request gave up (timeout, client
gone) are skipped, not computed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

RunFn = Callable[[list[str], list[str] | None], list[dict[str, Any]]]


class QueueFull(Exception):
    """The queue cannot take this request's inputs now."""


@dataclass
class Item:
    text: str
    pair: str | None
    future: asyncio.Future[dict[str, Any]]
    enqueued: float = field(default_factory=time.monotonic)


def plan_groups(
    lengths: Sequence[int], max_waste: float = 0.1, min_group: int = 1
) -> list[list[int]]:
    """Indices sorted by length, split so each group's padding stays under `max_waste`.

    A group of n inputs padded to its longest (L) costs n*L token slots; a split happens when adding
    the next (longer) input would make that more than (1 + max_waste) x the real tokens, and the
    group already has `min_group` inputs.

    On CPU padding is pure waste and a model call costs little on top of its compute: for the
    int8 ONNX MiniLM on tweets, 32 unsorted inputs in one call cost ~1.8x more per input than one
    call per input, while sorted groups with 10% waste cost ~0.7x (benchmarks-serve.md).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        n = lengths[i]
        if len(cur) >= min_group and (len(cur) + 1) * n > (1 + max_waste) * (real + n):
            groups.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += n
    if cur:
        groups.append(cur)
    return groups


class MicroBatcher:
    """Queue + batching loop. Create inside a running event loop; `start()`, then `submit()`."""

    def __init__(
        self,
        run: RunFn,
        lengths: Callable[[list[str], list[str] | None], list[int]],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ):
        self.run_fn = run
        self.lengths_fn = lengths
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.on_queue = on_queue
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # One thread: the model call itself uses the intra-op threads; two calls at once would
        # only fight over the same cores.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tailorml-model")
        self.batches = 0
        self._last_batch = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    def submit(self, texts: list[str], pairs: list[str] | None) -> list[asyncio.Future[Any]]:
        """Queue every input of one request, or none of them (QueueFull)."""
        if self._closing:
            raise QueueFull("the service is shutting down")
        if len(self._queue) + len(texts) > self.max_queue:
            self._drop_abandoned()
            if len(self._queue) + len(texts) > self.max_queue:
                raise QueueFull(
                    f"queue full ({len(self._queue)} inputs waiting, max_queue={self.max_queue})"
                )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        now = time.monotonic()
        for i, text in enumerate(texts):
            fut = loop.create_future()
            self._queue.append(Item(text, pairs[i] if pairs is not None else None, fut, now))
            futures.append(fut)
        self._report_depth()
        self._wake.set()
        return futures

    def _drop_abandoned(self) -> None:
        if any(it.future.done() for it in self._queue):
            self._queue = deque(it for it in self._queue if not it.future.done())
            self._report_depth()

    def _report_depth(self) -> None:
        if self.on_queue:
            self.on_queue(len(self._queue))

    async def close(self, timeout: float = 30.0) -> None:
        """Finish every queued input, then stop the loop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
        self._pool.shutdown(wait=True)

    async def _take(self) -> list[Item]:
        """Wait for a batch: full, or the oldest input has waited max_wait."""
        while True:
            while not self._queue:
                if self._closing:
                    return []
                self._wake.clear()
                await self._wake.wait()
            head = self._queue[0]
            deadline = head.enqueued + self.max_wait
            # A lone input right after a lone batch: no sign of concurrent clients (a single
            # sequential client, say), so waiting would only add latency. Under load the last
            # batch had company, and waiting up to max_wait fills the next one.
            alone = len(self._queue) == 1 and self._last_batch <= 1
            while len(self._queue) < self.max_batch_size and not self._closing and not alone:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    break
            batch: list[Item] = []
            while self._queue and len(batch) < self.max_batch_size:
                item = self._queue.popleft()
                if not item.future.done():  # skip inputs whose request already gave up
                    batch.append(item)
            self._report_depth()
            if batch:
                return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            if not batch:
                return
            self._last_batch = len(batch)
            texts = [it.text for it in batch]
            pairs = [it.pair or "" for it in batch] if batch[0].pair is not None else None
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._pool, self._run_sorted, texts, pairs)
            except Exception:
                # One bad input must not fail its neighbours: rerun one by one, so only the
                # culprit's request gets the error.
                for it in batch:
                    if it.future.done():
                        continue
                    try:
                        one = await loop.run_in_executor(
                            self._pool,
                            self.run_fn,
                            [it.text],
                            None if it.pair is None else [it.pair],
                        )
                        if not it.future.done():
                            it.future.set_result(one[0])
                    except Exception as exc:
                        if not it.future.done():
                            it.future.set_exception(exc)
                continue
            finally:
                self.batches += 1
                if self.on_batch:
                    self.on_batch(len(batch), time.perf_counter() - t0)
            for it, res in zip(batch, results, strict=True):
                if not it.future.done():
                    it.future.set_result(res)

    def _run_sorted(self, texts: list[str], pairs: list[str] | None) -> list[dict[str, Any]]:
        """Run in the model thread: length-sorted groups, results back in input order."""
        out: list[dict[str, Any] | None] = [None] * len(texts)
        groups = [list(range(len(texts)))]
        if len(texts) > 1:
            groups = plan_groups(self.lengths_fn(texts, pairs))
        for g in groups:
            res = self.run_fn(
                [texts[i] for i in g], [pairs[i] for i in g] if pairs is not None else None
            )
            for i, r in zip(g, res, strict=True):
                out[i] = r
        return [r for r in out if r is not None]
