"""Serving latency of `tailor recommend serve` at a fixed concurrency.

Starts the service on a run folder, warms it up, then `--concurrency` client threads each send
`GET /v1/recommend?user_id=U&k=10` for users drawn at random (and, with `--post`, the same users'
histories as `POST` bodies, the path of a user the model has not seen). Prints p50 / p99
latency (ms) and requests/s, one JSON line.

    python benchmarks/recommend_serve.py runs/recommend-movielens --concurrency 8 --requests 800
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=800)
    ap.add_argument("--threads", type=int, default=2, help="the service's torch threads")
    ap.add_argument("--post", action="store_true", help="POST the users' histories instead")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/recommend"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tailorml.cli", "recommend", "serve", str(args.run), "--port",
         str(port), "--threads", str(args.threads)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("the service did not start")
            time.sleep(0.3)
        users = np.load(args.run / "users.npz")
        items = [json.loads(x)["item_id"] for x in (args.run / "items.jsonl").open()]
        ids = [str(u) for u in users["user_ids"]]
        offsets, seq = users["offsets"], users["items"]
        rng = random.Random(0)
        picks = [rng.randrange(len(ids)) for _ in range(args.requests)]

        def one(client: httpx.Client, n: int) -> float:
            t = time.perf_counter()
            if args.post:
                hist = [items[i] for i in seq[offsets[n] : offsets[n + 1]][-200:]]
                r = client.post(url, json={"history": hist, "k": 10})
            else:
                r = client.get(url, params={"user_id": ids[n], "k": 10})
            r.raise_for_status()
            return time.perf_counter() - t

        with httpx.Client(timeout=60) as c:
            for n in picks[:20]:  # warm-up
                one(c, n)
        lat: list[float] = []
        lock = threading.Lock()
        queue = list(picks)

        def worker() -> None:
            with httpx.Client(timeout=60) as c:
                while True:
                    with lock:
                        if not queue:
                            return
                        n = queue.pop()
                    dt = one(c, n)
                    with lock:
                        lat.append(dt)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        ms = np.array(lat) * 1000
        print(
            json.dumps(
                {
                    "endpoint": "POST" if args.post else "GET",
                    "concurrency": args.concurrency,
                    "requests": len(lat),
                    "p50_ms": round(float(np.percentile(ms, 50)), 2),
                    "p99_ms": round(float(np.percentile(ms, 99)), 2),
                    "requests_per_s": round(len(lat) / wall, 1),
                }
            )
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


if __name__ == "__main__":
    main()
