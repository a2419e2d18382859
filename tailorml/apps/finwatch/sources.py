"""Where events come from: a JSONL file followed as it grows, stdin, HTTP (see server.py), Redis.

The file follower keeps its byte offset in the database and commits it in the same transaction
as the events it read, so after kill -9 it resumes exactly after the last committed line. It only
consumes complete lines: a line a writer is still appending is read once its newline lands.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

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


def read_stream(watcher: Watcher, stream: TextIO | None = None) -> IngestResult:
    """Ingest JSON lines from stdin (or any text stream) until EOF, in micro-batches that wait at
    most `batch_wait_s` to fill."""
    stream = stream or sys.stdin
    total = IngestResult()
    bs, wait = watcher.cfg.batch_size, watcher.cfg.batch_wait_s
    batch: list[str] = []
    deadline = time.monotonic() + wait
    use_select = _selectable(stream)
    while True:
        ready = True
        if use_select and batch:
            ready = bool(select.select([stream], [], [], max(0.0, deadline - time.monotonic()))[0])
        line = stream.readline() if ready else None
        if line == "":  # EOF
            break
        if line is not None and line.strip():
            if not batch:
                deadline = time.monotonic() + wait
            batch.append(line)
        if batch and (len(batch) >= bs or line is None or time.monotonic() >= deadline):
            total.add(watcher.ingest(batch, "stdin"))
            batch = []
    if batch:
        total.add(watcher.ingest(batch, "stdin"))
    return total


def _selectable(stream: Any) -> bool:
    try:
        stream.fileno()
        return os.name == "posix"
    except (AttributeError, OSError, ValueError):
        return False
