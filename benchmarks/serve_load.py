"""Load test `tailor serve` against a plain FastAPI + Hugging Face pipeline, all in one run.

For each system (batching on; batching off = --max-batch-size 1; the pipeline peer on the fp32
model) the script starts the server on 127.0.0.1, warms it up, sends a bounded number of one-text
requests at each concurrency, and stops it. Only one server runs at a time, so they never share
the cores with each other. Then it sends SIGTERM to a batching server under load and checks that
every request the server accepted was answered (zero dropped).

The load generator speaks HTTP/1.1 over asyncio streams (keep-alive, one connection per virtual
client): it costs far less CPU than an HTTP library, which matters when it shares 2 cores with the
server it measures.

    python benchmarks/serve_load.py --model runs/finsent/compressed/int8 \
        --baseline-model runs/finsent/model --requests 2000 --concurrency 1,8,32 \
        --out runs/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------- tiny client


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes, bool]:
        """(status, body, sent): `sent` says whether the request went out on an open connection."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        line = await self.reader.readline()
        if not line:
            await self.close()
            raise ConnectionResetError("closed before any response")
        status = int(line.split()[1])
        length, close = 0, False
        while True:
            h = await self.reader.readline()
            if h in (b"\r\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "connection" and v.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, data, True

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def run_load(
    port: int, texts: list[str], n: int, concurrency: int, stop_after: float | None = None
) -> dict[str, Any]:
    """Send `n` one-text requests from `concurrency` clients: latencies and outcome counts."""
    latencies: list[float] = []
    counts = {"ok": 0, "http_errors": 0, "refused": 0, "closed_unanswered": 0}
    statuses: dict[int, int] = {}
    next_i = 0
    t_end = time.perf_counter() + stop_after if stop_after else None

    async def client() -> None:
        nonlocal next_i
        conn = Conn("127.0.0.1", port)
        while next_i < n and (t_end is None or time.perf_counter() < t_end):
            i = next_i
            next_i += 1
            body = json.dumps({"inputs": [texts[i % len(texts)]]}).encode()
            t0 = time.perf_counter()
            try:
                status, _, _ = await conn.post("/v1/predict", body)
            except (ConnectionRefusedError, OSError) as exc:
                # Refused: the listening socket is closed. Closed with no answer: the server shut
                # an idle keep-alive connection as we wrote to it (never read, so never accepted).
                kind = "refused" if isinstance(exc, ConnectionRefusedError) else "closed_unanswered"
                counts[kind] += 1
                await conn.close()
                if kind == "refused":
                    await asyncio.sleep(0.01)
                continue
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            counts["ok" if status == 200 else "http_errors"] += 1
        await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": counts["ok"] + counts["http_errors"],
        "wall_s": wall,
        "throughput_rps": counts["ok"] / wall if wall else 0.0,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "statuses": statuses,
        **counts,
    }


# --------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, log: Path):
        self.name, self.cmd, self.port, self.log = name, cmd, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
        self.fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            self.cmd, cwd=REPO, stdout=self.fh, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if b" 200 " in s.recv(100):
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready in 180 s; see {self.log}")

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.fh.close()
        return rc

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def metric(self, name: str) -> float:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        m = re.search(rf"^{name} ([0-9.e+-]+)$", data.decode(), re.M)
        return float(m.group(1)) if m else float("nan")


def tailor_cmd(model: str, port: int, threads: int, batch: int, wait_ms: float) -> list[str]:
    return [
        sys.executable, "-m", "tailorml.cli", "serve", model, "--port", str(port),
        "--threads", str(threads), "--max-batch-size", str(batch), "--max-wait-ms", str(wait_ms),
        "--max-queue", "4096", "--log-level", "info",
    ]  # fmt: skip


# --------------------------------------------------------------------------------- main


def read_texts(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [r["text"] for r in csv.DictReader(fh) if r.get("text", "").strip()]


def one_run(server: Server, texts: list[str], n: int, c: int, ours: bool) -> dict[str, Any]:
    before = (
        (server.metric("tailorml_batch_size_sum"), server.metric("tailorml_batch_size_count"))
        if ours
        else None
    )
    row = asyncio.run(run_load(server.port, texts, n, c))
    if before:
        s = server.metric("tailorml_batch_size_sum") - before[0]
        k = server.metric("tailorml_batch_size_count") - before[1]
        row["mean_batch"] = s / k if k else None
    print(
        f"  {server.name:<12} c={c:<3} {row['throughput_rps']:8.1f} req/s  "
        f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
        f"errors {row['http_errors'] + row['refused'] + row['closed_unanswered']}"
        + (f"  mean batch {row['mean_batch']:.1f}" if row.get("mean_batch") else ""),
        flush=True,
    )
    return row


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats (errors: summed)."""
    med = statistics.median
    out = {
        "concurrency": runs[0]["concurrency"],
        "repeats": len(runs),
        "requests_per_run": runs[0]["requests"],
        "throughput_rps": med(r["throughput_rps"] for r in runs),
        "p50_ms": med(r["p50_ms"] for r in runs),
        "p99_ms": med(r["p99_ms"] for r in runs),
        "errors": sum(r["http_errors"] + r["refused"] + r["closed_unanswered"] for r in runs),
        "runs": runs,
    }
    if runs[0].get("mean_batch") is not None:
        out["mean_batch"] = med(r["mean_batch"] for r in runs)
    return out


def drain_check(args: argparse.Namespace, texts: list[str], logdir: Path) -> dict[str, Any]:
    """SIGTERM a batching server while 32 clients keep sending; nothing accepted may be lost."""
    port = free_port()
    srv = Server(
        "drain",
        tailor_cmd(args.model, port, args.threads, args.max_batch_size, args.max_wait_ms),
        port,
        logdir / "drain.log",
    )
    srv.__enter__()

    async def go() -> dict[str, Any]:
        load = asyncio.create_task(run_load(port, texts, 10**9, 32, stop_after=args.drain_seconds))
        await asyncio.sleep(args.drain_seconds / 2)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        return await load

    res = asyncio.run(go())
    rc = srv.stop()
    log = (logdir / "drain.log").read_text(errors="replace")
    m = re.search(r"drained: (\d+) request\(s\) accepted, (\d+) answered", log)
    accepted, answered = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    # The readiness probe and the warm-up also went through the server: count predictions only.
    out = {
        "exit_code": rc,
        "client_ok": res["ok"],
        "client_http_errors": res["http_errors"],
        "refused_after_sigterm": res["refused"] + res["closed_unanswered"],
        "server_accepted": accepted,
        "server_answered": answered,
        "dropped": None if accepted is None else accepted - answered,
    }
    print(f"  drain: {out}", flush=True)
    return out


def markdown(results: dict[str, Any]) -> str:
    """The results as the table in docs/benchmarks-serve.md."""
    sysr = results["systems"]
    lines = [
        "| system | model | concurrency | req/s | p50 ms | p99 ms | errors | mean batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    served = Path(results["model"]).name
    base = Path(results["baseline_model"] or "").name
    for name, rows in sysr.items():
        model = base if name in ("pipeline", "batching-fp32") else served
        for r in rows:
            mb = f"{r['mean_batch']:.1f}" if r.get("mean_batch") else "-"
            lines.append(
                f"| {name} | {model} | {r['concurrency']} | {r['throughput_rps']:.1f} | "
                f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {mb} |"
            )
    if "batching" in sysr:
        lines += ["", "| concurrency | batching / no-batching | batching / pipeline | "
                  "batching-fp32 / pipeline |", "|---|---|---|---|"]  # fmt: skip
        for i, r in enumerate(sysr["batching"]):
            cells = []
            for other, mine in (("no-batching", "batching"), ("pipeline", "batching"),
                                ("pipeline", "batching-fp32")):  # fmt: skip
                ok = other in sysr and mine in sysr
                cells.append(f"{_ratio(sysr[mine][i], sysr[other][i]):.2f}x" if ok else "-")
            lines.append(f"| {r['concurrency']} | " + " | ".join(cells) + " |")
    if "drain" in results:
        d = results["drain"]
        lines += [
            "",
            f"SIGTERM under load (32 clients): server accepted {d['server_accepted']}, answered "
            f"{d['server_answered']} (dropped: {d['dropped']}); clients got {d['client_ok']} x 200 "
            f"and {d['client_http_errors']} HTTP errors; {d['refused_after_sigterm']} attempts "
            "after the socket closed were refused.",
        ]
    return "\n".join(lines)


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    return a["throughput_rps"] / b["throughput_rps"] if b["throughput_rps"] else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="Folder tailor serves (compressed or fp32).")
    ap.add_argument(
        "--run",
        help="Run folder: serve the variant compression.json chose (else RUN/model), and use "
        "RUN/model for the pipeline peer. Decided when the benchmark starts.",
    )
    ap.add_argument("--baseline-model", help="fp32 HF folder for the pipeline peer.")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=1, help="Runs per system and level (median).")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--threads", type=int, default=2, help="Inference threads, every system.")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--texts", default=str(REPO / "data/twitter_fin_sentiment/sent_valid.csv"))
    ap.add_argument("--systems", default="batching,no-batching,pipeline,batching-fp32")
    ap.add_argument("--drain-seconds", type=float, default=6.0)
    ap.add_argument("--no-drain", action="store_true")
    ap.add_argument("--out", help="Write all results as JSON here.")
    ap.add_argument("--logdir", default="/tmp/tailorml-serve-load")
    args = ap.parse_args()

    source = "--model"
    if args.run:
        run = Path(args.run)
        args.baseline_model = args.baseline_model or str(run / "model")
        comp = run / "compression.json"
        entries = json.loads(comp.read_text()) if comp.is_file() else []
        chosen = next((e.get("path") for e in entries if e.get("chosen")), None)
        if chosen and Path(chosen).is_dir():
            args.model, source = chosen, f"chosen in {comp}"
        else:
            args.model, source = str(run / "model"), "fp32 (no chosen variant in compression.json)"
    if not args.model:
        raise SystemExit("give --model or --run")
    print(f"serving {args.model} ({source}); pipeline peer on {args.baseline_model}", flush=True)
    texts = read_texts(Path(args.texts))
    levels = [int(c) for c in args.concurrency.split(",")]
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    systems = args.systems.split(",")
    results: dict[str, Any] = {
        "model": args.model,
        "model_source": source,
        "baseline_model": args.baseline_model,
        "requests": args.requests,
        "threads": args.threads,
        "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "systems": {},
    }
    print(f"{len(texts)} texts; {args.requests} requests per level; levels {levels}", flush=True)
    # All servers start first and sit idle (an idle server costs no CPU); the runs then rotate
    # through the systems, so a noisy neighbour on the shared machine hits all of them alike.
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        for name in systems:
            port = free_port()
            if name == "batching":
                cmd = tailor_cmd(
                    args.model, port, args.threads, args.max_batch_size, args.max_wait_ms
                )
            elif name == "no-batching":
                cmd = tailor_cmd(args.model, port, args.threads, 1, 0)
            elif name == "batching-fp32":  # separates the serving gain from the compression gain
                if not args.baseline_model or args.baseline_model == args.model:
                    continue
                cmd = tailor_cmd(
                    args.baseline_model, port, args.threads, args.max_batch_size, args.max_wait_ms
                )
            elif name == "pipeline":
                if not args.baseline_model:
                    print("  pipeline: skipped (no --baseline-model)")
                    continue
                cmd = [
                    sys.executable, str(REPO / "benchmarks/pipeline_server.py"),
                    args.baseline_model, "--port", str(port), "--threads", str(args.threads),
                ]  # fmt: skip
            else:
                raise SystemExit(f"unknown system {name!r}")
            servers[name] = stack.enter_context(Server(name, cmd, port, logdir / f"{name}.log"))
        for srv in servers.values():
            asyncio.run(run_load(srv.port, texts, 100, 4))  # warm-up, not measured
        raw: dict[str, dict[int, list[dict[str, Any]]]] = {
            n: {c: [] for c in levels} for n in servers
        }
        names = list(servers)
        for rep in range(args.repeats):
            print(f"repeat {rep + 1}/{args.repeats}", flush=True)
            for c in levels:
                for k in range(len(names)):
                    name = names[(k + rep) % len(names)]
                    raw[name][c].append(
                        one_run(servers[name], texts, args.requests, c, name != "pipeline")
                    )
    results["systems"] = {n: [summarize(raw[n][c]) for c in levels] for n in raw}
    print("\nmedians:")
    for n, rows in results["systems"].items():
        for r in rows:
            print(
                f"  {n:<12} c={r['concurrency']:<3} {r['throughput_rps']:8.1f} req/s  "
                f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}"
                + (f"  mean batch {r['mean_batch']:.1f}" if r.get("mean_batch") else "")
            )
    if not args.no_drain:
        results["drain"] = drain_check(args, texts, logdir)

    sysr = results["systems"]
    print("\nratios at each concurrency (throughput):")
    for i, c in enumerate(levels):
        parts = []
        if "batching" in sysr and "no-batching" in sysr:
            r = _ratio(sysr["batching"][i], sysr["no-batching"][i])
            parts.append(f"batching/no-batching {r:.2f}x")
        if "batching" in sysr and "pipeline" in sysr:
            r = _ratio(sysr["batching"][i], sysr["pipeline"][i])
            parts.append(f"batching/pipeline {r:.2f}x")
        if "batching-fp32" in sysr and "pipeline" in sysr:
            r = _ratio(sysr["batching-fp32"][i], sysr["pipeline"][i])
            parts.append(f"batching-fp32/pipeline {r:.2f}x")
        print(f"  c={c}: " + ", ".join(parts))
    print("\n" + markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        Path(args.out).with_suffix(".md").write_text(markdown(results) + "\n")
        print(f"wrote {args.out} and its .md table")


if __name__ == "__main__":
    main()
