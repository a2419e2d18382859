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
from typing import IO, Any, BinaryIO

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.events import MAX_RAW_CHARS, Rejected, shown
from tailorml.apps.finwatch.pipeline import IngestResult, Watcher

log = logging.getLogger("tailorml.finwatch")


READ_BYTES = 4 << 20  # read at most this much at a time; a longer line is never held whole


def follow_file(
    watcher: Watcher,
    path: Path,
    follow: bool = True,
    poll_s: float = 0.2,
    idle_exit_s: float | None = None,
    stop: threading.Event | None = None,
) -> IngestResult:
    """Ingest `path` from the stored offset; with `follow`, keep reading as the file grows.

    A line longer than READ_BYTES is scanned to its end without being held in memory and
    dead-lettered once ("oversized"), with its first bytes. Without `follow`, a last line with
    no newline is taken too (the file is complete); with `follow` it is read once its newline
    lands (a writer may be appending it)."""
    total = IngestResult()
    path = path.resolve()
    key = f"offset:file:{path}"
    src = f"file:{path.name}"
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
                data = fh.read(min(size - offset, READ_BYTES))
                end = data.rfind(b"\n")
                if end < 0 and len(data) >= READ_BYTES:
                    line_end = _line_end(fh, offset + len(data))
                    if line_end is None and not follow:
                        line_end = size
                    if line_end is not None:
                        n = line_end - offset
                        why = (
                            f"oversized: a line of {n} bytes (lines are read {READ_BYTES} at most)"
                        )
                        rej = Rejected(why, shown(data[:MAX_RAW_CHARS]), src)
                        total.add(watcher.ingest([rej], src, checkpoint=(key, line_end)))
                        offset = line_end
                        idle_since = time.monotonic()
                        continue
            if end < 0 and not follow and offset + len(data) == size:
                data += b"\n"  # the last line of a complete file, with no newline
                end = len(data) - 1
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
                new_offset = min(offset + taken, size)
        if lines:
            nonblank = [ln for ln in lines if ln.strip()]
            total.add(watcher.ingest(nonblank, src, checkpoint=(key, new_offset)))
            offset = new_offset
            idle_since = time.monotonic()
            continue
        if not follow:
            break
        if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
            break
        time.sleep(poll_s)
    return total


def _line_end(fh: BinaryIO, pos: int) -> int | None:
    """The offset just after the next newline at or after `pos`, or None if the file ends
    first; reads in READ_BYTES blocks, keeping none of them."""
    fh.seek(pos)
    while True:
        block = fh.read(READ_BYTES)
        if not block:
            return None
        nl = block.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(block)


def read_stream(
    watcher: Watcher,
    stream: IO[str] | IO[bytes] | None = None,
    stop: threading.Event | None = None,
    poll_s: float = 0.2,
) -> IngestResult:
    """Ingest JSON lines from stdin (or any stream) until EOF or `stop`, in micro-batches that
    wait at most `batch_wait_s` to fill.

    stdin is read as bytes, so bytes that are not UTF-8 reach the event's checks (and its
    dead letter) rather than the decoder of the stream; a line longer than READ_BYTES is read
    to its end in pieces and dead-lettered once. A reader thread does the blocking reads, so
    this loop notices `stop` while no line comes; on `stop` the micro-batch in hand is
    ingested before it returns."""
    src: IO[Any] = stream if stream is not None else sys.stdin.buffer
    total = IngestResult()
    bs, wait = watcher.cfg.batch_size, watcher.cfg.batch_wait_s
    # bounded: backpressure
    lines: queue.Queue[str | bytes | Rejected | None] = queue.Queue(maxsize=bs * 4)

    def reader() -> None:
        try:
            while True:
                line = src.readline(READ_BYTES + 1)
                if not line:
                    break
                nl = b"\n" if isinstance(line, bytes) else "\n"
                if len(line) <= READ_BYTES or line.endswith(nl):
                    lines.put(line)
                    continue
                n, more = len(line), line
                while more and not more.endswith(nl):  # skip the rest of the line
                    more = src.readline(READ_BYTES)
                    n += len(more)
                why = f"oversized: a line of {n} bytes (lines are read {READ_BYTES} at most)"
                lines.put(Rejected(why, shown(line[:MAX_RAW_CHARS]), "stdin"))
        except Exception as exc:  # a read error ends the stream, said in the log
            log.error("stdin: cannot read on (%s: %s); stopping there", type(exc).__name__, exc)
        finally:
            lines.put(None)  # EOF

    threading.Thread(target=reader, daemon=True, name="finwatch-stdin").start()
    batch: list[str | bytes | Rejected] = []
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
        elif isinstance(line, Rejected) or line.strip():
            if not batch:
                deadline = time.monotonic() + wait
            batch.append(line)
        if batch and (eof or len(batch) >= bs or time.monotonic() >= deadline):
            total.add(watcher.ingest(batch, "stdin"))
            batch = []
    if batch:
        total.add(watcher.ingest(batch, "stdin"))
    return total
