"""A bounded soak of tailorml's services on loopback: mixed good and hostile traffic for N minutes.

One function per target (`soak_serve`, `soak_finwatch`); `--target serve|finwatch|both`. Each
starts the real command on 127.0.0.1, sends traffic for `--minutes`, and reports requests,
answers by status, latency percentiles, RSS of the server at the start and the end (growth must
stay bounded: `--max-rss-growth-mb`), and what the server's log shows. The exit status is 1 when
a bound is broken (a 5xx, a traceback in the log, RSS growth over the bound, /healthz failing).

    python benchmarks/soak.py --target serve --tiny --minutes 2 \\
        --out benchmarks/results/soak_serve_<date>.json
    python benchmarks/soak.py --target serve --model runs/finsent/compressed/onnx-int8

serve: `--clients` closed-loop clients (one keep-alive connection each) send good requests (1-8
tweets-like texts) and, with probability `--hostile-share`, one of the hostile requests below
(each on a fresh connection); besides them, a slowloris task keeps connections that stop halfway
through their headers or body, and a probe polls /healthz every 0.2 s. The server runs with its
default limits and an API key. Good requests are expected to answer 200, hostile ones the status
in HOSTILE.

Like the other benchmarks, the load generator shares the machine with the server it measures:
read latencies as orientation on a shared 2-core machine, and compare runs only on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KEY = "soak-key-0f8e7d6c5b4a39281706f5e4d3c2b1a0"
MiB = 1024 * 1024

WORDS = ("shares rally after strong quarter", "stock plunges on weak guidance",
         "company announces conference schedule", "analyst upgrade lifts the market",
         "regulator fines bank over filing", "oil prices steady ahead of the report",
         "株価が急落 📉 after the miss", "Gewinnwarnung für $SAP")  # fmt: skip


def _req(body: bytes, *, path: str = "/v1/predict", key: str | None = KEY,
         ctype: str = "application/json", extra: bytes = b"") -> bytes:  # fmt: skip
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
    if key:
        head += f"Authorization: Bearer {key}\r\n"
    return head.encode() + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


# name -> (raw request bytes, expected status); each built once, sent many times.
HOSTILE: dict[str, tuple[Callable[[], bytes], int]] = {
    "40k zeros": (lambda: _req(json.dumps({"inputs": [0] * 40_000}).encode()), 413),
    "100k unknown keys": (
        lambda: _req(
            ("{" + ", ".join(f'"k{i}": 0' for i in range(100_000)) + ', "inputs": ["a"]}').encode()
        ),
        413,
    ),  # fmt: skip
    "100k-deep lists": (lambda: _req(b"[" * 100_000 + b"]" * 100_000), 422),
    "60 wrong-typed inputs": (lambda: _req(json.dumps({"inputs": [0] * 60}).encode()), 422),
    "65 inputs": (lambda: _req(json.dumps({"inputs": ["a"] * 65}).encode()), 413),
    "invalid UTF-8": (lambda: _req(b'{"inputs": ["caf\xe9"]}'), 422),
    "5,000-digit integer": (lambda: _req(b'{"inputs": [' + b"9" * 5000 + b"]}"), 422),
    "lone surrogate": (lambda: _req(b'{"inputs": ["\\ud800"]}'), 422),
    "broken JSON": (lambda: _req(b'{"inputs": ["a",'), 422),
    "text/plain": (lambda: _req(b'{"inputs": ["a"]}', ctype="text/plain"), 422),
    "1 MiB of escapes": (lambda: _req(b'{"inputs": ["' + b"\\\\" * (MiB // 2) + b'"]}'), 413),
    "body over max_body_bytes": (lambda: _req(b" " * (4 * MiB + 1)), 413),
    "no API key": (lambda: _req(b'{"inputs": ["a"]}', key=None), 401),
    "wrong API key": (lambda: _req(b'{"inputs": ["a"]}', key="nope"), 401),
    "64 kB header": (
        lambda: _req(b'{"inputs": ["a"]}', extra=b"X-Pad: " + b"p" * 65536 + b"\r\n"),
        431,
    ),  # fmt: skip
    "garbage request line": (lambda: b"\x00\x01\x02 nonsense\r\n\r\n", 400),
    "unknown path": (lambda: _req(b"{}", path="/../../etc/passwd"), 404),
}


# --------------------------------------------------------------------------------- HTTP


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, server closes): one response with a Content-Length."""
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("closed before any response")
    status = int(line.split()[1])
    length, close = 0, False
    while (h := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = h.decode("latin-1").partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
        elif k.strip().lower() == "connection" and "close" in v.lower():
            close = True
    await reader.readexactly(length)
    return status, close


async def one_shot(port: int, raw: bytes, timeout: float = 60) -> int:
    """Send `raw` on a fresh connection; the status (0 when there was no answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return (await asyncio.wait_for(read_response(reader), timeout))[0]
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        return 0
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# --------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_model(folder: Path) -> Path:
    """A 2-layer keyword classifier trained in seconds (what the tests use): RUN/model."""
    import csv

    from tailorml.config.load import validate_mapping
    from tailorml.recipes.finetune import finetune

    rng = random.Random(0)
    words = {"negative": ["weak", "plunge", "miss"], "neutral": ["report", "schedule", "notes"],
             "positive": ["strong", "rally", "beat"]}  # fmt: skip
    rows = []
    for i in range(240):
        label = ["negative", "neutral", "positive"][i % 3]
        rows.append({"text": f"the company {rng.choice(words[label])} today", "label": label})
    data = folder / "train.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    cfg, problems = validate_mapping({
        "name": "soak", "output_dir": str(folder / "run"),
        "data": {"train": str(data), "max_length": 32},
        "model": {"base": "tiny", "dropout": 0.0}, "task": {"type": "classification"},
        "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "seed": 0, "threads": 1},
    })  # fmt: skip
    assert cfg is not None, problems
    finetune(cfg)
    return folder / "run" / "model"


def start_serve(model: Path, port: int, log: Path, threads: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tailorml.cli", "serve", str(model), "--port", str(port),
           "--threads", str(threads), "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TAILORML_API_KEY": KEY}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env=env)  # fmt: skip
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tailor serve exited ({proc.returncode}); see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if b" 200 " in s.recv(100):
                return proc
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"tailor serve not ready in 180 s; see {log}")


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` in MiB (Linux /proc; psutil, which accelerate brings, elsewhere)."""
    status = Path(f"/proc/{pid}/status")
    if status.is_file():
        m = re.search(r"^VmRSS:\s+(\d+) kB", status.read_text(), re.M)
        if m:
            return int(m.group(1)) / 1024
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / MiB


def metrics_text(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  "Connection: close\r\n\r\n".encode())  # fmt: skip
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode("utf-8", "replace")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(1000 * v[min(len(v) - 1, int(q * len(v)))], 2)


# --------------------------------------------------------------------------------- serve


async def _traffic(port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    hostile = {name: (build(), want) for name, (build, want) in HOSTILE.items()}
    good_status: dict[int, int] = {}
    good_lat: list[float] = []
    bad: dict[str, dict[str, Any]] = {n: {"sent": 0, "statuses": {}, "ms": []} for n in hostile}
    health_lat: list[float] = []
    health_fail = 0
    slow = {"opened": 0, "cut_off": 0, "seconds_to_cut": []}
    rss: list[tuple[float, float]] = []
    t_start = time.monotonic()
    t_end = t_start + 60 * args.minutes

    async def client() -> None:
        reader = writer = None
        while time.monotonic() < t_end:
            if rng.random() < args.hostile_share:
                name = rng.choice(list(hostile))
                raw, _ = hostile[name]
                t0 = time.perf_counter()
                status = await one_shot(port, raw)
                b = bad[name]
                b["sent"] += 1
                b["statuses"][status] = b["statuses"].get(status, 0) + 1
                b["ms"].append(time.perf_counter() - t0)
                continue
            texts = [
                rng.choice(WORDS) + f" {rng.randint(0, 999)}" for _ in range(rng.randint(1, 8))
            ]
            raw = _req(json.dumps({"inputs": texts}).encode())
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                writer.write(raw)
                await writer.drain()
                status, close = await asyncio.wait_for(read_response(reader), 60)
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                status, close = 0, True  # a kept-alive connection closed as we wrote: retry
            if status:
                good_lat.append(time.perf_counter() - t0)
            good_status[status] = good_status.get(status, 0) + 1
            if close and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def slowloris() -> None:
        """Connections that stop halfway: through the headers, or through the body."""
        half_head = b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        half_body = _req(b'{"inputs": ["a"]}' + b" " * 100)[:-60]
        while time.monotonic() < t_end:
            opened = []
            for raw in (half_head, half_body):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(raw)
                opened.append((reader, writer, time.monotonic()))
                slow["opened"] += 1
            for reader, writer, t0 in opened:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.read(), 60)  # until the server closes it
                    slow["cut_off"] += 1
                    slow["seconds_to_cut"].append(time.monotonic() - t0)
                writer.close()

    async def probe() -> None:
        nonlocal health_fail
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                status, _ = await asyncio.wait_for(read_response(reader), 10)
                health_lat.append(time.perf_counter() - t0)
                health_fail += status != 200
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                health_fail += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.2)
        writer.close()

    async def memory() -> None:
        while time.monotonic() < t_end:
            rss.append((round(time.monotonic() - t_start, 1), round(rss_mb(pid), 1)))
            await asyncio.sleep(10)

    await asyncio.gather(
        *(client() for _ in range(args.clients)),
        *(slowloris() for _ in range(3)),
        probe(),
        memory(),
    )
    rss.append((round(time.monotonic() - t_start, 1), round(rss_mb(pid), 1)))
    wrong = {n: {s: c for s, c in b["statuses"].items() if s != hostile[n][1]}
             for n, b in bad.items()}  # fmt: skip
    return {
        "seconds": round(time.monotonic() - t_start, 1),
        "good": {
            "requests": sum(good_status.values()),
            "statuses": good_status,
            "p50_ms": pct(good_lat, 0.5),
            "p99_ms": pct(good_lat, 0.99),
            "max_ms": pct(good_lat, 1.0),
        },  # fmt: skip
        "hostile": {
            n: {
                "sent": b["sent"],
                "expected": hostile[n][1],
                "statuses": b["statuses"],
                "p99_ms": pct(b["ms"], 0.99),
                "max_ms": pct(b["ms"], 1.0),
            }
            for n, b in bad.items()
        },  # fmt: skip
        "hostile_unexpected": {n: w for n, w in wrong.items() if w},
        "slowloris": {
            "opened": slow["opened"],
            "cut_off": slow["cut_off"],
            "max_s_to_cut": round(max(slow["seconds_to_cut"], default=0), 2),
        },
        "healthz": {
            "probes": len(health_lat),
            "failures": health_fail,
            "p50_ms": pct(health_lat, 0.5),
            "p99_ms": pct(health_lat, 0.99),
            "max_ms": pct(health_lat, 1.0),
        },  # fmt: skip
        "rss_mb": rss,
    }


def soak_serve(args: argparse.Namespace) -> dict[str, Any]:
    """`tailor serve` under mixed traffic; the result, with `ok` False when a bound broke."""
    work = Path(tempfile.mkdtemp(prefix="tailorml-soak-"))
    model = Path(args.model) if args.model else tiny_model(work) if args.tiny else None
    if model is None:
        raise SystemExit("serve: give --model PATH or --tiny")
    port, log = free_port(), work / "serve.log"
    proc = start_serve(model, port, log, args.threads)
    try:
        for _ in range(20):  # warm-up, then the RSS the growth is measured from
            asyncio.run(one_shot(port, _req(b'{"inputs": ["warm up"]}')))
        result = asyncio.run(_traffic(port, proc.pid, args))
        errors = dict(re.findall(r'^tailorml_errors_total\{kind="(\w+)"\} ([0-9.e+]+)$',
                                 metrics_text(port), re.M))  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    out = log.read_text(errors="replace")
    rss = [mb for _, mb in result["rss_mb"]]
    growth = rss[-1] - rss[0]
    statuses: dict[int, int] = {}
    for b in [result["good"], *result["hostile"].values()]:
        for s, c in b["statuses"].items():
            statuses[s] = statuses.get(s, 0) + c
    result.update(
        target="serve",
        model=str(model),
        server_errors_total={k: float(v) for k, v in errors.items()},
        all_statuses=dict(sorted(statuses.items())),
        rss_start_mb=rss[0], rss_end_mb=rss[-1], rss_peak_mb=max(rss),
        rss_growth_mb=round(growth, 1),
        log_tracebacks=out.count("Traceback"),
        exit_status=rc,
    )  # fmt: skip
    broken = []
    if any(s >= 500 for s in statuses):
        broken.append("a 5xx answer")
    if result["hostile_unexpected"]:
        broken.append("a hostile request got an unexpected status")
    if set(result["good"]["statuses"]) - {200, 0} or result["good"]["statuses"].get(0, 0) > 3:
        broken.append("good requests not answered 200")
    if result["healthz"]["failures"]:
        broken.append("/healthz failed")
    if result["log_tracebacks"]:
        broken.append("tracebacks in the server log")
    if growth > args.max_rss_growth_mb:
        broken.append(f"RSS grew {growth:.0f} MiB (> {args.max_rss_growth_mb})")
    result["broken"] = broken
    result["ok"] = not broken
    return result


def soak_finwatch(args: argparse.Namespace) -> dict[str, Any]:
    """`tailor finwatch watch --http` under mixed good/bad events (benchmarks/soak_finwatch.py):
    every good event stored exactly once (`lost` 0), every bad one dead-lettered."""
    import tempfile

    from soak_finwatch import run_finwatch_soak  # type: ignore[import-not-found]

    out = Path(args.out).parent if args.out else Path(tempfile.mkdtemp(prefix="soak-finwatch-"))
    report = run_finwatch_soak(args.minutes, out)
    report.setdefault("target", "finwatch")
    report.setdefault("ok", report.get("lost", 1) == 0)
    report["skipped"] = None
    return report


TARGETS = {"serve": soak_serve, "finwatch": soak_finwatch}


# --------------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    flags, name = "", None
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^flags\s*:\s*(.*)$", info, re.M)
        flags = " ".join(f for f in (m.group(1).split() if m else [])
                         if f.startswith(("avx512", "amx", "avx2")))  # fmt: skip
        name = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    return {
        "cpu": name.group(1) if name else platform.processor(),
        "cores": os.cpu_count(),
        "cpu_flags": flags,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def table(r: dict[str, Any]) -> str:
    if r.get("skipped"):
        return f"{r['target']}: skipped ({r['skipped']})"
    if r["target"] == "finwatch":  # its own report (benchmarks/soak_finwatch.py)
        shown = {k: v for k, v in r.items() if not isinstance(v, dict | list)}
        return f"finwatch: {json.dumps(shown)}"
    g, h, sl = r["good"], r["healthz"], r["slowloris"]
    lines = [
        f"{r['target']}: {r['seconds']:.0f} s, model {r['model']}",
        f"  {'traffic':28s} {'requests':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}",
        f"  {'good (200 expected)':28s} {g['requests']:9d} {g['p50_ms']!s:>8s} "
        f"{g['p99_ms']!s:>8s} {g['max_ms']!s:>8s}",
    ]
    for name, b in r["hostile"].items():
        got = ", ".join(f"{s}: {c}" for s, c in sorted(b["statuses"].items()))
        lines.append(f"  {name[:28]:28s} {b['sent']:9d} {'':>8s} {b['p99_ms']!s:>8s} "
                     f"{b['max_ms']!s:>8s}  want {b['expected']}, got {got}")  # fmt: skip
    lines += [
        f"  {'/healthz probe':28s} {h['probes']:9d} {h['p50_ms']!s:>8s} {h['p99_ms']!s:>8s} "
        f"{h['max_ms']!s:>8s}  failures {h['failures']}",
        f"  slowloris: {sl['opened']} half-sent connections, {sl['cut_off']} cut off by the "
        f"server (slowest after {sl['max_s_to_cut']} s)",
        f"  answers by status: {r['all_statuses']}",
        f"  server errors_total: {r['server_errors_total']}",
        f"  RSS: start {r['rss_start_mb']:.0f} MiB, peak {r['rss_peak_mb']:.0f}, end "
        f"{r['rss_end_mb']:.0f} (growth {r['rss_growth_mb']:+.1f} MiB); log tracebacks "
        f"{r['log_tracebacks']}; exit status {r['exit_status']}",
        f"  {'OK' if r['ok'] else 'BROKEN: ' + '; '.join(r['broken'])}",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", choices=["serve", "finwatch", "both"], default="serve")
    ap.add_argument("--minutes", type=float, default=2.0, help="Length of each soak.")
    ap.add_argument("--model", help="serve: the model folder to serve.")
    ap.add_argument("--tiny", action="store_true", help="serve: train a tiny model to serve.")
    ap.add_argument("--clients", type=int, default=8, help="Closed-loop clients.")
    ap.add_argument("--hostile-share", type=float, default=0.3, help="Share of hostile requests.")
    ap.add_argument("--threads", type=int, default=1, help="Inference threads of the server.")
    ap.add_argument("--max-rss-growth-mb", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="Write the results as JSON here.")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    targets = ["serve", "finwatch"] if args.target == "both" else [args.target]
    results = {"machine": machine(), "args": vars(args), "targets": {}}
    for t in targets:
        print(f"soak {t}: {args.minutes:g} min ...", flush=True)
        results["targets"][t] = r = TARGETS[t](args)
        print(table(r), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(f"wrote {args.out}")
    sys.exit(0 if all(r["ok"] for r in results["targets"].values()) else 1)


if __name__ == "__main__":
    main()
