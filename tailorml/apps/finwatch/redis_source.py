"""Redis Streams source: several watchers share one stream through a consumer group.

Each stream entry holds the event JSON in the field `event`. A watcher reads with XREADGROUP and
acknowledges (XACK) only after the batch is committed to the database, so a watcher killed
mid-batch leaves its entries pending: on restart it re-reads its own pending entries first, and
entries pending on a consumer that has been idle for `claim_idle_ms` (a dead watcher) are taken
over with XAUTOCLAIM. Redelivery is harmless: ingest is idempotent on id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from tailorml.apps.finwatch.events import Rejected, shown, storable
from tailorml.apps.finwatch.pipeline import IngestResult, Watcher
from tailorml.errors import TailorError

log = logging.getLogger("tailorml.finwatch")


def connect(url: str, decode: bool = True) -> Any:
    """A Redis client that has answered PING, or a TailorError naming `--redis`, the URL and the
    fix (never redis-py's traceback). `decode=False` answers bytes (see `consume`)."""
    try:
        import redis
    except ImportError:
        raise TailorError(
            "--redis needs the `redis` package: pip install 'tailorml[finwatch]'"
        ) from None
    shown = redact(url)
    try:
        r = redis.Redis.from_url(url, decode_responses=decode, socket_connect_timeout=5)
    except ValueError as exc:  # not a redis://, rediss:// or unix:// URL
        raise TailorError(
            f"--redis {shown}: {exc}. Give a URL like redis://127.0.0.1:6379/0."
        ) from None
    try:
        r.ping()
    except redis.RedisError as exc:
        r.close()
        why = str(exc).rstrip(".")
        raise TailorError(
            f"--redis {shown}: cannot reach Redis ({why}). Start redis-server there, or point "
            "--redis at a running one (e.g. redis://127.0.0.1:6379/0)."
        ) from None
    return r


def redact(url: str) -> str:
    """The URL without its password, fit for a log line or an error message."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def ensure_group(r: Any, stream: str, group: str) -> None:
    import redis

    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def consume(
    watcher: Watcher,
    url: str,
    stream: str = "finwatch:events",
    group: str = "finwatch",
    consumer: str | None = None,
    idle_exit_s: float | None = None,
    stop: threading.Event | None = None,
    block_ms: int = 500,
    claim_idle_ms: int = 30_000,
    processed: list[str] | None = None,
) -> IngestResult:
    """Consume until `stop` is set or the stream has been idle for `idle_exit_s`.

    `processed` (optional) collects the ids of the events this consumer stored, for tests.

    Entries are read as bytes: a field that is not UTF-8 (or not there) is that entry's dead
    letter, not an error in redis-py's decoder that would end the consumer and, since the entry
    stays pending, every consumer that later claims it."""
    r = connect(url, decode=False)
    consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
    ensure_group(r, stream, group)
    total = IngestResult()
    count = watcher.cfg.batch_size
    pending_first = True
    idle_since = time.monotonic()
    while not (stop and stop.is_set()):
        entries: Any = []
        if pending_first:  # our own un-acked entries from before a crash
            resp: Any = r.xreadgroup(group, consumer, {stream: "0"}, count=count)
            entries = resp[0][1] if resp else []
            pending_first = bool(entries)
        if not entries:
            claimed: Any = r.xautoclaim(stream, group, consumer, claim_idle_ms, "0-0", count=count)
            entries = [e for e in claimed[1] if e and e[1] is not None]
        if not entries:
            resp = r.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
            entries = resp[0][1] if resp else []
        if not entries:
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                break
            continue
        idle_since = time.monotonic()
        raws = [_event_field(eid, fields, stream) for eid, fields in entries]
        res = watcher.ingest(raws, f"redis:{stream}")
        r.xack(stream, group, *[eid for eid, _ in entries])
        if processed is not None:
            import json

            for raw in raws:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    processed.append(str(json.loads(raw)["id"]))  # type: ignore[arg-type]
        total.add(res)
    r.close()
    return total


def _event_field(entry_id: bytes, fields: dict[bytes, bytes], stream: str) -> bytes | Rejected:
    raw = fields.get(b"event")
    if raw is not None:
        return raw
    names = ", ".join(storable(k.decode("utf-8", "backslashreplace"))[:40] for k in fields)
    eid = entry_id.decode("ascii", "replace")
    return Rejected(
        f"Redis entry {eid} has no `event` field (fields: {names or 'none'})",
        shown({k.decode("utf-8", "backslashreplace"): shown(v) for k, v in fields.items()}),
        f"redis:{stream}",
    )
