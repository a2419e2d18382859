"""Support chat latency through the HTTP service, per answer path (template, retrieval,
hand-off, generation), with the run's intent model and with compressed variants of it.

For each configuration, `tailor support serve RUN` is started as its own process (SQLite log in
a temp folder, `--threads`), and one client sends Banking77 test messages one at a time (a
stratified sample of --n, seed 0) to POST /v1/chat; each reply says which path answered it, so
the latencies are grouped by path (p50 / p99, milliseconds, client-side, the database write
included). Ratios are within this run: each variant's p50 against the run's own model, per path (the
generation path against the extractive retrieval path of the run's own model).

The generation path: the same service with `--generation smollm2` (SmolLM2-135M writes the
retrieval answer, `--max-new-tokens`), on --gen-n messages that retrieval answered.

    flock /tmp/tailorml-heavy.lock python benchmarks/support_latency.py --run runs/support \
        --variant runs/support/intent/compressed/onnx-int8 --generation smollm2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.support_retrieval import machine  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(path: Path, n: int, seed: int = 0) -> list[str]:
    """n messages, every intent in turn (a stratified sample)."""
    by: dict[str, list[str]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            by[row["category"]].append(row["text"])
    rng = random.Random(seed)
    for texts in by.values():
        rng.shuffle(texts)
    out: list[str] = []
    while len(out) < n and any(by.values()):
        for label in sorted(by):
            if by[label] and len(out) < n:
                out.append(by[label].pop())
    return out


def serve_and_time(run: Path, messages: list[str], args: list[str], threads: int) -> list[Any]:
    """(path, ms) per message, through a fresh `tailor support serve` process."""
    import httpx

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "tailorml.cli", "support", "serve", str(run),
            "--port", str(port), "--db", f"sqlite:///{tmp}/bench.db", "--threads", str(threads),
            "--log-level", "warning", *args,
        ]  # fmt: skip
        log = Path(tmp) / "log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}"
                deadline = time.time() + 600
                while True:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(log.read_text(errors="replace"))
                    try:
                        if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.3)
                out = []
                with httpx.Client(timeout=300) as client:
                    for j, m in enumerate(messages):
                        t0 = time.perf_counter()
                        r = client.post(
                            url + "/v1/chat", json={"session_id": f"b{j}", "message": m}
                        )
                        ms = 1000 * (time.perf_counter() - t0)
                        r.raise_for_status()
                        out.append((r.json()["path"], ms))
                return out
            finally:
                proc.terminate()
                proc.wait(60)


def summary(times: list[tuple[str, float]]) -> dict[str, dict[str, float]]:
    by: dict[str, list[float]] = defaultdict(list)
    for path, ms in times:
        by[path].append(ms)
    out = {}
    for path, ms in sorted(by.items()):
        ms.sort()
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        out[path] = {"n": len(ms), "p50_ms": statistics.median(ms), "p99_ms": p99}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "support")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "banking77" / "test.csv")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", action="append", default=[], help="Intent model folders.")
    ap.add_argument("--generation", default=None, help="Causal LM for the generation path.")
    ap.add_argument("--gen-n", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    messages = sample(a.data, a.n)
    results: dict[str, Any] = {"machine": machine(), "n": len(messages), "configs": {}}
    configs: list[tuple[str, list[str], list[str]]] = [("intent model (torch fp32)", [], messages)]
    configs += [(f"{Path(v).name}", ["--model", str(v)], messages) for v in a.variant]
    for name, args, msgs in configs:
        times = serve_and_time(a.run, msgs, args, a.threads)
        results["configs"][name] = summary(times)
        if name.startswith("intent model"):
            retrieved = [m for m, (p, _) in zip(msgs, times, strict=True) if p == "retrieval"]
    if a.generation:
        gen_args = ["--generation", a.generation, "--max-new-tokens", str(a.max_new_tokens)]
        times = serve_and_time(a.run, retrieved[: a.gen_n], gen_args, a.threads)
        results["configs"][f"generation ({a.generation})"] = {
            ("generation" if p == "retrieval" else p): v for p, v in summary(times).items()
        }
    base = results["configs"]["intent model (torch fp32)"]
    print(f"{'config':<28} {'path':<11} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'p50 vs fp32':>11}")
    for name, paths in results["configs"].items():
        for path, v in paths.items():
            # the generation path against the extractive retrieval answer it replaces
            peer = base.get("retrieval" if path == "generation" else path)
            ratio = peer["p50_ms"] / v["p50_ms"] if peer else float("nan")
            v["p50_speedup_vs_fp32"] = ratio
            print(
                f"{name:<28} {path:<11} {v['n']:>4} {v['p50_ms']:>9.1f} {v['p99_ms']:>9.1f} "
                f"{ratio:>10.2f}x"
            )
    print(json.dumps(results["machine"]))
    if a.out:
        a.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
