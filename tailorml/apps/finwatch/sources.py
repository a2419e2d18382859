"""Where events come from: a JSONL file followed as it grows, stdin, HTTP (see server.py), Redis.

The file follower keeps its byte offset in the database and commits it in the same transaction
as the events it read, so after kill -9 it resumes exactly after the last committed line. It only
consumes complete lines: a line a writer is still appending is read once its newline lands.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.pipeline import IngestResult, Watcher

log = logging.getLogger("tailorml.finwatch")


def follow_file(
    watcher: Watcher,
    path: Path,
    follow: bool = True,
    poll_s: float = 0.2,
    idle_exit_s: float | None = None,
    stop: threading.Event | None = None,
) -> IngestResult:
    """Ingest `path` from the stored offset; with `follow`, keep reading as the file grows."""
    total = IngestResult()
    path = path.resolve()
    key = f"offset:file:{path}"
    with watcher.engine.connect() as conn:
        offset = int(store.get_kv(conn, key, 0))
    bs = watcher.cfg.batch_size
    idle_since = time.monotonic()
    while not (stop and stop.is_set()):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        if 0 <= size < offset:
            log.warning(
                "%s shrank below the stored offset %d; reading it from the start", path, offset
            )
            offset = 0
        lines: list[bytes] = []
        new_offset = offset
        if size > offset:
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read(min(size - offset, 4 << 20))
            end = data.rfind(b"\n")
            if end < 0 and len(data) >= 4 << 20:
                # A line over 4 MiB: dead-letter it as oversized; its tail then fails as JSON.
                total.add(
                    watcher.ingest(
                        [data], f"file:{path.name}", checkpoint=(key, offset + len(data))
                    )
                )
                offset += len(data)
                continue
            if end >= 0:
                raw = data[: end + 1].split(b"\n")[:-1]
                # Take whole lines up to ~batch size per transaction (the checkpoint is the byte
                # after the last line taken).
                taken = 0
                for ln in raw:
                    lines.append(ln)
                    taken += len(ln) + 1
                    if len(lines) >= bs * 8:
                        break
                new_offset = offset + taken
        if lines:
            nonblank = [ln for ln in lines if ln.strip()]
            total.add(watcher.ingest(nonblank, f"file:{path.name}", checkpoint=(key, new_offset)))
            offset = new_offset
            idle_since = time.monotonic()
            continue
        if not follow:
            break
        if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
            break
        time.sleep(poll_s)
    return total


def read_stream(
    watcher: Watcher,
    stream: TextIO | None = None,
    stop: threading.Event | None = None,
    poll_s: float = 0.2,
) -> IngestResult:
    """Ingest JSON lines from stdin (or any text stream) until EOF or `stop`, in micro-batches
    that wait at most `batch_wait_s` to fill.

    A reader thread does the blocking reads, so this loop notices `stop` while no line comes; on
    `stop` the micro-batch in hand is ingested before it returns."""
    src = stream or sys.stdin
    total = IngestResult()
    bs, wait = watcher.cfg.batch_size, watcher.cfg.batch_wait_s
    lines: queue.Queue[str | None] = queue.Queue(maxsize=bs * 4)  # bounded: backpressure

    def reader() -> None:
        for line in iter(src.readline, ""):
            lines.put(line)
        lines.put(None)  # EOF

    threading.Thread(target=reader, daemon=True, name="finwatch-stdin").start()
    batch: list[str] = []
    deadline = time.monotonic() + wait
    eof = False
    while not eof and not (stop and stop.is_set()):
        timeout = max(0.0, deadline - time.monotonic()) if batch else poll_s
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            line = ""  # nothing new in time
        if line is None:
            eof = True
        elif line.strip():
            if not batch:
                deadline = time.monotonic() + wait
            batch.append(line)
        if batch and (eof or len(batch) >= bs or time.monotonic() >= deadline):
            total.add(watcher.ingest(batch, "stdin"))
            batch = []
    if batch:
        total.add(watcher.ingest(batch, "stdin"))
    return total
