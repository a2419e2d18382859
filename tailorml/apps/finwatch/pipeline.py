"""The watcher: parse -> dead-letter -> dedupe -> score (micro-batch) -> store -> close windows ->
detect -> alert. One writer per database; sources (file, stdin, HTTP, Redis) call `ingest`.

Exactly-once effect under kill -9: a micro-batch's events, its dead letters and the source
checkpoint (file offset) are committed in one transaction; closing windows commits the alerts,
the detector state and the "windows closed up to" pointer in another. Whatever a crash
interrupts is redone on restart, and redoing is harmless: events are keyed on id and alerts on
(topic, window), so nothing is stored or counted twice.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tailorml.apps.finwatch import store
from tailorml.apps.finwatch.config import FinwatchConfig
from tailorml.apps.finwatch.detector import SurgeDetector, Window
from tailorml.apps.finwatch.events import Event, Rejected, parse_event, shown, storable
from tailorml.apps.finwatch.scorer import Scorer, is_outage
from tailorml.apps.finwatch.trends import time_range, window_counts

log = logging.getLogger("tailorml.finwatch")
T = TypeVar("T")


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)
    # This call's dead letters, {"index", "id", "reason"} each (index = position in the batch),
    # for HTTP clients; not carried over by `add`, so the totals of a long run stay small.
    rejections: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: IngestResult) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.alerts.extend(other.alerts)


class Watcher:
    def __init__(self, cfg: FinwatchConfig, engine: Engine, scorer: Scorer):
        self.cfg = cfg
        self.engine = engine
        self.scorer = scorer
        self.lock = threading.Lock()  # one writer: HTTP threads and followers share the watcher
        self.detector: SurgeDetector | None = None
        self.db_retries = 0
        # Everything this watcher stored and raised, over every source: counted where it is
        # committed, so a source stopped mid-way (SIGTERM) loses nothing from the final report.
        self.totals = IngestResult()
        self._count_lock = threading.Lock()
        # Commits under way whose rows are in the database but not yet in `totals` (see `tally`).
        self._committing = 0

    def tally(self) -> tuple[tuple[int, int, int], bool]:
        """(stored events, dead letters, alerts) this watcher has added, and whether a commit is
        under way (its rows may already be visible to a count of the database, not yet here)."""
        with self._count_lock:
            t = self.totals
            return (t.accepted, t.rejected, len(t.alerts)), self._committing > 0

    # -- setup -------------------------------------------------------------------------------
    def open(self) -> Watcher:
        store.migrate(self.engine)
        with self.engine.connect() as conn:
            state = store.get_kv(conn, self._detector_key())
        det = SurgeDetector(**self.cfg.detector.model_dump(), per_topic=self.cfg.per_topic)
        self.detector = det.set_state(state) if state else det.fit([])
        return self

    def _detector_key(self) -> str:
        return f"detector:{self.cfg.detect_window}"

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        """`fn` (one transaction) retried while the database is unreachable, counting retries."""

        def count(_exc: BaseException) -> None:
            self.db_retries += 1

        return store.with_retry(fn, what, on_retry=count)

    # -- ingest ------------------------------------------------------------------------------
    def ingest(
        self,
        raws: Sequence[str | bytes | dict[str, Any] | Rejected],
        source: str,
        checkpoint: tuple[str, Any] | None = None,
        advance: bool = True,
    ) -> IngestResult:
        """Store a batch of raw events (scored in micro-batches); optionally commit a source
        checkpoint in the same transaction. Returns counts and any alerts fired. A source hands
        over as a `Rejected` what it could not even read (a line too long to hold).

        An event that cannot be parsed, validated, scored or stored goes to the dead letters with
        the reason, and the rest of the batch is stored: nothing in one event can fail the
        batch (which would block the stream, as its source would offer the batch again). What is
        not the event's fault still raises before anything is committed: the database down for
        longer than `store.with_retry` waits, the model service unreachable or broken."""
        source = storable(source)
        res = IngestResult()
        good: list[tuple[int, Event]] = []
        bad: list[tuple[int, Rejected]] = []
        seen: set[str] = set()
        for i, raw in enumerate(raws):
            ev = self._check(raw, source)
            if isinstance(ev, Rejected):
                bad.append((i, ev))
            elif ev.id in seen:
                res.duplicates += 1
            else:
                seen.add(ev.id)
                good.append((i, ev))
        with self.lock:
            have = self._retry(lambda: self._existing([e for _, e in good]), "dedupe")
            new = [(i, e) for i, e in good if e.id not in have]
            res.duplicates += len(good) - len(new)
            rows: list[tuple[int, dict[str, Any]]] = []
            bs = self.cfg.batch_size
            for k in range(0, len(new), bs):  # micro-batches through the models
                scored, failed = self._score(new[k : k + bs], raws)
                bad.extend(failed)
                now = time.time()
                for i, e, (topic, sent, p_neg) in scored:
                    row = {
                        "id": e.id,
                        "ts": e.time,
                        "text": e.text,
                        "source": e.source[:200],
                        "topic": topic,
                        "sentiment": sent,
                        "p_negative": p_neg,
                        "ingested_at": now,
                    }
                    rows.append((i, row))
            with self._count_lock:
                self._committing += 1
            try:
                inserted = self._store(rows, bad, raws, checkpoint)
            except BaseException:
                with self._count_lock:
                    self._committing -= 1
                raise
            bad.sort(key=lambda b: b[0])  # scoring and storing may have added some
            # A concurrent writer (another watcher) may have stored some ids since the dedupe.
            res.duplicates += len(rows) - inserted
            res.accepted += inserted
            res.rejected += len(bad)
            res.rejections = [{"index": i, "id": r.id, "reason": r.reason} for i, r in bad]
            with self._count_lock:
                self.totals.add(IngestResult(res.accepted, res.duplicates, res.rejected))
                self._committing -= 1
            for _, r in bad:
                log.info("dead letter (%s): %s", r.source, _one_line(r.reason))
            if advance:
                res.alerts.extend(self.advance())
        return res

    def _check(self, raw: str | bytes | dict[str, Any] | Rejected, source: str) -> Event | Rejected:
        """Parse and validate one raw event (the scorer's own checks and the clock included)."""
        if isinstance(raw, Rejected):
            return raw
        ev = parse_event(raw, source, self.cfg.max_text_chars)
        if isinstance(ev, Rejected):
            return ev
        try:
            reason = self.scorer.problem(ev)
        except Exception as exc:  # the scorer's check is code too; still only this event's
            reason = f"cannot be checked: {type(exc).__name__}: {exc}"
        fut = self.cfg.max_future_s
        if not reason and fut is not None and ev.time > time.time() + fut:
            reason = f"time in the future: {ev.time:.0f} is more than {fut:.0f}s ahead"
        return Rejected(reason, shown(raw), source, ev.id) if reason else ev

    def _score(
        self, chunk: list[tuple[int, Event]], raws: Sequence[Any]
    ) -> tuple[list[tuple[int, Event, tuple[str, str, float]]], list[tuple[int, Rejected]]]:
        """Topic and sentiment of each event of a micro-batch; the events the scorer fails on
        alone are returned as rejected ("cannot be scored").

        When the micro-batch fails, each event is scored alone. An outage (`is_outage`: the
        model service unreachable, no memory) raises at once; an event that fails alone is the
        event's fault only if a known-good probe event still scores (else the scorer itself is
        broken and that error is raised: nothing is committed, as before)."""
        events = [e for _, e in chunk]
        try:
            out = self.scorer.score(events)
            return [(i, e, r) for (i, e), r in zip(chunk, out, strict=True)], []
        except Exception as exc:
            if is_outage(exc):
                raise
            log.warning(
                "scoring a micro-batch of %d failed (%s); scoring its events one by one",
                len(events),
                _one_line(f"{type(exc).__name__}: {exc}")[:300],
            )
        scored: list[tuple[int, Event, tuple[str, str, float]]] = []
        failed: list[tuple[int, Rejected]] = []
        for i, e in chunk:
            try:
                scored.append((i, e, self.scorer.score([e])[0]))
            except Exception as exc:
                if is_outage(exc) or not self._scorer_works():
                    raise
                why = f"cannot be scored: {type(exc).__name__}: {exc}"
                failed.append((i, Rejected(why, shown(raws[i]), e.source, e.id)))
        return scored, failed

    def _scorer_works(self) -> bool:
        probe = Event(
            id="finwatch-probe",
            time=0.0,
            text="Shares of the company rose after it reported quarterly results.",
            labels={"topic": "probe", "sentiment": "neutral"},
        )
        try:
            self.scorer.score([probe])
        except Exception as exc:
            log.error(
                "the scorer fails on a plain probe text too (%s): not the events' fault, so "
                "the batch is not committed",
                _one_line(f"{type(exc).__name__}: {exc}")[:300],
            )
            return False
        return True

    def _store(
        self,
        rows: list[tuple[int, dict[str, Any]]],
        bad: list[tuple[int, Rejected]],
        raws: Sequence[Any],
        checkpoint: tuple[str, Any] | None,
    ) -> int:
        """Commit the events, the dead letters and the checkpoint in one transaction; returns
        how many events were new. Connection errors are retried (`store.with_retry`). Any other
        failure is looked for row by row (each tried alone in a transaction that is rolled
        back): the rows the database refuses become dead letters ("cannot be stored") and the
        rest is committed; if no single row is refused, the error is raised."""

        def write() -> int:
            dl = [_dead_letter_row(r) for _, r in sorted(bad, key=lambda b: b[0])]  # batch order
            with self.engine.begin() as conn:
                n = store.insert_ignore(conn, store.events, [r for _, r in rows], ["id"])
                if dl:
                    conn.execute(store.dead_letters.insert(), dl)
                if checkpoint is not None:
                    store.upsert_kv(conn, checkpoint[0], checkpoint[1])
            return n

        try:
            return self._retry(write, "store batch")
        except Exception as exc:
            if store.is_transient(exc) or not rows:
                raise
            refused = self._refused_rows(rows)
            if not refused:
                raise
            log.warning(
                "the database refused %d event(s) of a batch (%s); dead-lettering them",
                len(refused),
                _one_line(str(exc))[:300],
            )
        keep = []
        for i, row in rows:
            why = refused.get(i)
            if why is None:
                keep.append((i, row))
            else:
                reason = f"cannot be stored: {why}"
                bad.append((i, Rejected(reason, shown(raws[i]), row["source"], row["id"])))
        rows[:] = keep
        return self._retry(write, "store batch")

    def _refused_rows(self, rows: list[tuple[int, dict[str, Any]]]) -> dict[int, str]:
        refused = {}
        for i, row in rows:
            with self.engine.connect() as conn:
                trans = conn.begin()
                try:
                    store.insert_ignore(conn, store.events, [row], ["id"])
                except Exception as exc:
                    if store.is_transient(exc):
                        raise
                    first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                    refused[i] = f"{type(exc).__name__}: {first}"
                finally:
                    trans.rollback()
        return refused

    def _existing(self, evs: list[Event]) -> set[str]:
        if not evs:
            return set()
        with self.engine.connect() as conn:
            return store.existing_ids(conn, [e.id for e in evs])

    # -- windows and detection --------------------------------------------------------------
    def advance(self, final: bool = False) -> list[dict[str, Any]]:
        """Close every detection window the watermark has passed; detect; store alerts.

        The watermark is (newest event time - lateness). `final` closes the window holding the
        newest event too (end of a replay)."""
        with self._count_lock:
            self._committing += 1
        fired: list[dict[str, Any]] = []
        try:
            fired = list(self._retry(lambda: self._advance(final), "close windows"))
        finally:
            with self._count_lock:
                self.totals.alerts.extend(fired)
                self._committing -= 1
        return fired

    def _advance(self, final: bool) -> list[dict[str, Any]]:
        assert self.detector is not None
        w = self.cfg.detect_window
        fired: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            # Several watchers may share one database (a Redis consumer group): closing windows
            # is serialized by a lock held for this transaction, and the detector state is
            # re-read from the database, so each window is judged once, by one of them.
            store.lock_for_update(conn, "advance")
            state = store.get_kv(conn, self._detector_key())
            if state:
                self.detector.set_state(state)
            lo, hi = time_range(conn)
            if lo is None or hi is None:
                return []
            nxt = store.get_kv(conn, f"closed:{w}")
            if nxt is None:
                nxt = math.floor(lo / w) * w
            wm = hi + w if final else hi - self.cfg.lateness_s
            end = math.floor(wm / w) * w  # windows starting before `end` are closed
            if end <= nxt:
                return []
            counts: dict[float, dict[str, dict[str, Any]]] = {}
            for r in window_counts(conn, w, nxt, end):
                counts.setdefault(r["window_start"], {})[r["topic"]] = r
            topics = sorted(
                set(self.scorer.topics)
                | set(store.get_kv(conn, "topics", []))
                | {t for c in counts.values() for t in c}
            )
            store.upsert_kv(conn, "topics", topics)
            det = self.detector
            state_before = det.get_state()
            try:
                # Window by window in time order; a topic's windows without events are judged
                # in runs (`update_empty`), just before its next window with events (the same
                # result as one by one: no other topic's state is read for an empty window), so
                # a gap of years between events closes in milliseconds.
                empty_from: dict[str, float] = {}  # topic -> start of its run of empty windows

                def judge_empty(topic: str, upto: float) -> None:
                    first = empty_from.pop(topic, None)
                    if first is not None:
                        runs = round((upto - first) / w)
                        for found in det.update_empty(topic, first, runs, w):
                            fired.append(self._store_alert(conn, found))

                cursor = float(nxt)
                for start in sorted(s for s in counts if nxt <= s < end):
                    per = counts[start]
                    for topic in topics:
                        empty_from.setdefault(topic, cursor)
                        row = per.get(topic)
                        if row is None:
                            continue
                        judge_empty(topic, start)
                        found = det.update(self._window(topic, start, row))
                        if found:
                            fired.append(self._store_alert(conn, found))
                    cursor = start + w
                for topic in topics:
                    empty_from.setdefault(topic, cursor)
                    judge_empty(topic, float(end))
                store.upsert_kv(conn, self._detector_key(), det.get_state())
                store.upsert_kv(conn, f"closed:{w}", end)
            except BaseException:
                det.set_state(state_before)  # the transaction rolls back; so does the detector
                raise
        for a in fired:
            log.warning(
                "ALERT negative surge: topic=%s window=%s n=%d negative=%d share=%.2f "
                "(baseline %.2f, z=%.1f)",
                a["topic"],
                a["window_start_iso"],
                a["figures"]["n"],
                a["figures"]["n_negative"],
                a["figures"]["negative_share"],
                a["figures"]["baseline_share"],
                a["figures"]["z_share"],
            )
        return fired

    def _window(self, topic: str, start: float, row: dict[str, Any]) -> Window:
        """What the detector judges of one topic-window: with `detect_on: probability` the sums
        of p_negative and p_negative (1 - p_negative), else the argmax count alone."""
        n, neg = int(row["volume"]), int(row["negative"])
        if self.cfg.detect_on == "label":
            return Window(topic, start, n, neg)
        return Window(topic, start, n, neg, row["expected_negative"], row["var_negative"])

    def _store_alert(self, conn: Connection, a: dict[str, Any]) -> dict[str, Any]:
        w = self.cfg.detect_window
        ids = list(
            conn.execute(
                sa.select(store.events.c.id)
                .where(
                    store.events.c.topic == a["topic"],
                    store.events.c.sentiment == "negative",
                    store.events.c.ts >= a["window_start"],
                    store.events.c.ts < a["window_start"] + w,
                )
                .order_by(store.events.c.ts)
                .limit(self.cfg.evidence_events)
            ).scalars()
        )
        figures = {k: v for k, v in a.items() if k not in ("topic", "window_start")}
        row = {
            "topic": a["topic"],
            "window_s": w,
            "window_start": a["window_start"],
            "figures": json.dumps(figures),
            "event_ids": json.dumps(ids),
            "created_at": time.time(),
            "attempts": 0,
            "next_attempt_at": 0.0,
        }
        store.insert_ignore(conn, store.alerts, [row], ["topic", "window_s", "window_start"])
        from datetime import UTC, datetime

        return {
            "topic": a["topic"],
            "window_s": w,
            "window_start": a["window_start"],
            "window_start_iso": datetime.fromtimestamp(a["window_start"], UTC).isoformat(),
            "figures": figures,
            "event_ids": ids,
        }


def _dead_letter_row(r: Rejected) -> dict[str, Any]:
    return {
        "received_at": time.time(),
        "source": storable(r.source)[:200],
        "reason": storable(r.reason)[:500],
        "raw": storable(r.raw),
    }


def _one_line(text: str) -> str:
    """For a log line: what a client sent may hold newlines (a forged second log line)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")
