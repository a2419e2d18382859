"""A bounded soak of `tailor finwatch watch --http` on loopback: good and hostile traffic for N
minutes, then an account of every event sent.

The watcher runs as its own process (the labels scorer: no model needed) on a fresh SQLite
database under `out`. Client threads POST batches to /v1/events that mix good events (unique
ids, a simulated stream moving forward in time, so windows close and the detector runs) with
bad ones (nested thousands deep, lone surrogates, NUL, huge numbers, bytes that are not UTF-8,
bad times, missing fields, non-objects), resend earlier batches (duplicates), and send bodies
that are wrong as a whole (not JSON, empty, wrong content type, too many events) and bad
query parameters. A prober reads /healthz every 50 ms. RSS of the watcher is sampled.

At the end the watcher is stopped with SIGTERM and the database is read back:

- lost = good events in a batch answered 200 that are not stored (must be 0);
- each stored id appears once (primary key) and the trends count each event once;
- dead letters = the bad events of the batches answered 200, each with its reason.

    python benchmarks/soak_finwatch.py --minutes 2 --out runs/soak

`run_finwatch_soak(minutes, out)` is what `benchmarks/soak.py --target finwatch` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

T0 = 1767571200  # 2026-01-05T00:00:00Z: where the simulated stream starts
TOPICS = ["Macro", "Earnings", "Energy | Oil", "Currencies", "IPO", "Markets"]
SENTIMENTS = ["Bearish", "Bullish", "Neutral", "Neutral", "Neutral"]
DEEP = "[" * 3000 + "]" * 3000


def _bad_event(rng: random.Random, eid: str) -> str:
    """The JSON text of one bad event (kinds as in tests/test_hostile_finwatch.py)."""
    base = f'"id": "{eid}", "time": {T0}, "labels": {{"topic": "Macro", "sentiment": "Neutral"}}'
    kinds = [
        DEEP,
        f'{{{base}, "text": "a", "x": {DEEP}}}',
        f'{{"id": "{eid}", "text": "t", "time": {"9" * 5000}}}',
        f'{{{base}, "text": "lone \\ud800 surrogate"}}',
        f'{{{base}, "text": "a NUL \\u0000 here"}}',
        f'{{"id": "{eid}", "text": "t", "time": NaN}}',
        f'{{"id": "{eid}", "text": "t", "time": "yesterday"}}',
        f'{{"id": "{eid}", "text": "t", "time": "0001-01-01T00:00:00"}}',
        f'{{{base}, "text": null}}',
        f'{{"id": {"7" * 400}, "text": "t", "time": 1}}',
        '"just a string"',
        "[1, 2, 3]",
        f'{{{base}, "text": "{"x" * 6000}"}}',
        f'{{"id": "{eid}", "time": {T0}, "text": "t", "labels": {{"topic": "{"T" * 150}", '
        '"sentiment": "Bearish"}}',
    ]
    return rng.choice(kinds)


NOT_UTF8 = b'{"id": "%s", "time": 1767571200, "text": "\xff\xfe", "labels": {}}'


class Soak:
    def __init__(self, minutes: float, out: Path, clients: int = 3, seed: int = 0):
        self.minutes, self.out, self.clients = minutes, out, clients
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.next_id = 0
        self.sent_good: set[str] = set()  # in batches answered 200
        self.unacked_good: set[str] = set()  # in batches answered otherwise (or not at all)
        self.bad_acked = 0  # bad events in new batches answered 200
        self.rejected_new = 0  # what those answers said
        self.rejected_all = 0  # ... and the answers to resent batches (dead-lettered again)
        self.status: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = {}
        self.health: list[float] = []
        self.health_failures = 0
        self.rss: list[tuple[float, int]] = []
        self.errors: Counter[str] = Counter()

    # -- the watcher ----------------------------------------------------------------------------
    def start(self) -> None:
        import yaml

        self.out.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            (self.out / f"soak-finwatch.db{suffix}").unlink(missing_ok=True)
        self.db = f"sqlite:///{self.out / 'soak-finwatch.db'}"
        cfg = {"finwatch": {"db": self.db, "models": {"scorer": "labels"}}}
        self.cfg = self.out / "soak-finwatch.yaml"
        self.cfg.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (self.out / "soak-finwatch.log").open("wb")
        repo = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": str(repo), "OMP_WAIT_POLICY": "PASSIVE"}
        cmd = [sys.executable, "-m", "tailorml.cli", "finwatch", "watch", str(self.cfg)]
        self.proc = subprocess.Popen(
            [*cmd, "--http", f"127.0.0.1:{self.port}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        import httpx

        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the watcher exited; see {self.log.name}")
            time.sleep(0.1)
        raise RuntimeError("the watcher did not become ready in 60 s")

    def rss_kb(self) -> int:
        for ln in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
        return 0

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        self.log.close()
        lines = out.decode().strip().splitlines()
        return {
            "exit_status": self.proc.returncode,
            "summary": json.loads(lines[-1]) if lines else None,
        }

    # -- traffic --------------------------------------------------------------------------------
    def _ids(self, n: int) -> list[str]:
        with self.lock:
            first = self.next_id
            self.next_id += n
        return [f"s{i}" for i in range(first, first + n)]

    def _good(self, eid: str) -> dict[str, Any]:
        n = int(eid[1:])
        return {
            "id": eid,
            "time": T0 + n * 0.5,  # the stream moves 2 events per simulated second
            "text": f"post {eid} on the market",
            "labels": {"topic": self.rng.choice(TOPICS), "sentiment": self.rng.choice(SENTIMENTS)},
        }

    def _record(self, kind: str, status: str, took: float) -> None:
        with self.lock:
            self.status[f"{kind} {status}"] += 1
            self.latency.setdefault(kind, []).append(took)

    def client(self, stop: threading.Event, seed: int) -> None:
        import httpx

        rng = random.Random(seed)
        recent: list[bytes] = []
        js = {"Content-Type": "application/json"}
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not stop.is_set():
                roll = rng.random()
                try:
                    if roll < 0.80:
                        self._post_batch(c, rng, recent)
                    elif roll < 0.85 and recent:  # a resent batch: all duplicates
                        t = time.perf_counter()
                        r = c.post("/v1/events", content=rng.choice(recent), headers=js)
                        self._record("resend", str(r.status_code), time.perf_counter() - t)
                        if r.status_code == 200:
                            with self.lock:
                                self.rejected_all += r.json()["rejected"]
                                if r.json()["accepted"]:
                                    self.errors["a resent batch stored something new"] += 1
                    elif roll < 0.92:
                        body, headers = rng.choice(
                            [
                                (b"{not json", js),
                                (b"", js),
                                (b'[{"id": "x"}]', {"Content-Type": "text/plain"}),
                                (b"[" + b"{}," * 10_000 + b"{}]", js),
                                (b'{"events": 7}', js),
                            ]
                        )
                        t = time.perf_counter()
                        r = c.post("/v1/events", content=body, headers=headers)
                        self._record("bad body", str(r.status_code), time.perf_counter() - t)
                    else:
                        path = rng.choice(
                            [
                                "/api/trends",
                                "/api/trends?window=3600&hours=48",
                                "/api/alerts?limit=20",
                                "/api/trends?window=-5",
                                "/api/trends?hours=inf",
                                "/api/alerts?limit=0",
                            ]
                        )
                        t = time.perf_counter()
                        r = c.get(path)
                        self._record("dashboard api", str(r.status_code), time.perf_counter() - t)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.errors[type(exc).__name__] += 1
                stop.wait(0.005)

    def _post_batch(self, c: Any, rng: random.Random, recent: list[bytes]) -> None:
        import httpx

        n = rng.randint(1, 60)
        ids = self._ids(n)
        parts: list[bytes] = []
        good: list[str] = []
        bad = 0
        for eid in ids:
            r = rng.random()
            if r < 0.15:
                parts.append(_bad_event(rng, eid).encode())
                bad += 1
            elif r < 0.17:
                parts.append(NOT_UTF8 % eid.encode())
                bad += 1
            else:
                parts.append(json.dumps(self._good(eid)).encode())
                good.append(eid)
        body = b"[" + b", ".join(parts) + b"]"
        t = time.perf_counter()
        try:
            resp = c.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError:
            with self.lock:
                self.unacked_good.update(good)
            raise
        took = time.perf_counter() - t
        self._record("events", str(resp.status_code), took)
        with self.lock:
            if resp.status_code == 200:
                got = resp.json()
                self.sent_good.update(good)
                self.bad_acked += bad
                self.rejected_new += got["rejected"]
                self.rejected_all += got["rejected"]
                if got["accepted"] + got["duplicates"] != len(good):
                    self.errors["accepted+duplicates != good events sent"] += 1
            else:
                self.unacked_good.update(good)
        if len(recent) < 50 and len(body) < 200_000:
            recent.append(body)

    def probe(self, stop: threading.Event) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    ok = c.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                with self.lock:
                    self.health.append(time.perf_counter() - t)
                    self.health_failures += 0 if ok else 1
                stop.wait(0.05)

    def sample_rss(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.rss.append((time.monotonic(), self.rss_kb()))
            stop.wait(2.0)

    # -- the account ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.start()
        rss_start = self.rss_kb()
        stop = threading.Event()
        threads = [
            threading.Thread(target=self.client, args=(stop, k), daemon=True)
            for k in range(self.clients)
        ]
        threads += [
            threading.Thread(target=self.probe, args=(stop,), daemon=True),
            threading.Thread(target=self.sample_rss, args=(stop,), daemon=True),
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        stop.wait(self.minutes * 60)
        stop.set()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - t0
        rss_end = self.rss_kb()
        stopped = self.stop()
        return self.account(elapsed, rss_start, rss_end, stopped)

    def _rss_quarters(self) -> list[float]:
        if not self.rss:
            return []
        t0, t1 = self.rss[0][0], self.rss[-1][0]
        out = []
        for q in (0.25, 0.5, 0.75, 1.0):
            at = t0 + q * (t1 - t0)
            kb = next(kb for t, kb in self.rss if t >= at - 1e-9)
            out.append(round(kb / 1024, 1))
        return out

    def account(
        self, elapsed: float, rss_start: int, rss_end: int, stopped: dict[str, Any]
    ) -> dict[str, Any]:
        import sqlalchemy as sa

        from tailorml.apps.finwatch import store
        from tailorml.apps.finwatch.trends import window_counts
        from tailorml.env import cpu_name

        engine = store.make_engine(self.db)
        with engine.connect() as conn:
            ids = set(conn.execute(sa.select(store.events.c.id)).scalars())
            n_rows = conn.execute(sa.select(sa.func.count()).select_from(store.events)).scalar()
            volume = sum(r["volume"] for r in window_counts(conn, 3600, 0, 1e12))
            dead = conn.execute(sa.select(sa.func.count()).select_from(store.dead_letters)).scalar()
            no_reason = conn.execute(
                sa.select(sa.func.count())
                .select_from(store.dead_letters)
                .where(store.dead_letters.c.reason == "")
            ).scalar()
        engine.dispose()
        lost = self.sent_good - ids
        stray = ids - self.sent_good - self.unacked_good  # stored, but not sent as good
        all_lat = [x for v in self.latency.values() for x in v]

        def ms(xs: list[float], q: int) -> float:
            if len(xs) < 2:
                return round(1000 * max(xs, default=0.0), 1)
            return round(1000 * statistics.quantiles(xs, n=100, method="inclusive")[q - 1], 1)

        return {
            "target": "finwatch",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {cpu_name()}, {os.cpu_count()} cores",
            "minutes": round(elapsed / 60, 2),
            "clients": self.clients,
            "requests": sum(self.status.values()),
            "requests_by_status": dict(sorted(self.status.items())),
            "client_errors": dict(self.errors),
            "events_sent_good_acked": len(self.sent_good),
            "events_sent_good_unacked": len(self.unacked_good),
            "events_sent_bad_acked": self.bad_acked,
            "stored": len(ids),
            "stored_rows": n_rows,
            "trend_volume": volume,
            "dead_lettered": dead,
            "dead_letters_without_reason": no_reason,
            "rejected_reported_new": self.rejected_new,
            "rejected_reported_all": self.rejected_all,
            "lost": len(lost),
            "lost_examples": sorted(lost)[:10],
            "stored_not_sent_as_good": len(stray),
            "latency_ms": {
                "p50": ms(all_lat, 50),
                "p99": ms(all_lat, 99),
                "max": round(1000 * max(all_lat, default=0), 1),
                "p99_by_kind": {k: ms(v, 99) for k, v in sorted(self.latency.items())},
            },
            "healthz_ms": {
                "p50": ms(self.health, 50),
                "p99": ms(self.health, 99),
                "max": round(1000 * max(self.health, default=0), 1),
                "probes": len(self.health),
                "failures": self.health_failures,
            },
            "rss_mb": {
                "start": round(rss_start / 1024, 1),
                "end": round(rss_end / 1024, 1),
                "peak": round(max((kb for _, kb in self.rss), default=0) / 1024, 1),
                # at each quarter of the run: growth that levels off is caches filling
                "quarters": self._rss_quarters(),
            },
            "watcher": stopped,
        }


def run_finwatch_soak(minutes: float, out: Path) -> dict[str, Any]:
    """Soak `tailor finwatch watch --http` for `minutes`; write `out/soak-finwatch.json` (the
    database, config and the watcher's log lie next to it) and return the report. `lost` must
    be 0; the caller decides what else fails the soak."""
    report = Soak(minutes, Path(out)).run()
    (Path(out) / "soak-finwatch.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("runs/soak"))
    args = ap.parse_args()
    report = run_finwatch_soak(args.minutes, args.out)
    print(json.dumps(report, indent=2))
    ok = (
        report["lost"] == 0
        and report["stored_not_sent_as_good"] == 0
        and report["stored"] == report["stored_rows"] == report["trend_volume"]
        and report["events_sent_bad_acked"] == report["rejected_reported_new"]
        and report["dead_lettered"] == report["rejected_reported_all"]
        and report["dead_letters_without_reason"] == 0
        and not report["client_errors"]
        and report["healthz_ms"]["failures"] == 0
        and report["watcher"]["exit_status"] == 0
    )
    print("soak", "OK" if ok else "FAILED", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
