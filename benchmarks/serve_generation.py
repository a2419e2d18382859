"""Generation throughput of `tailor serve` against a plain transformers `generate` server, in one
run: tokens/s at each concurrency, and time to first token p50/p99.

Both serve the same model (SmolLM2-135M-Instruct, fp32, the converted folder `smollm2` names)
with the same threads, and get the same requests: Banking77 test questions, one user turn each,
greedy, `--max-new-tokens` each, streamed (Server-Sent Events) so that the first token's arrival
can be timed. The peer is benchmarks/generate_peer_server.py (FastAPI + `generate` +
`TextIteratorStreamer`, no batching across requests). One server runs at a time; rounds
alternate (ours, peer, ours, peer, ...) so machine noise hits both; the table gives medians over
rounds.

Tokens are counted the same way for both: each answer re-tokenized with the model's tokenizer.
Throughput = all answer tokens of a level / the level's wall time (first request sent to last
answer received). Greedy answers are compared across the two servers (they should agree: one
decoding, two engines).

    python benchmarks/serve_generation.py --concurrency 1,8 --requests 6,16 --rounds 3 \
        --max-new-tokens 64 --out benchmarks/results/serve_generation.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2, or a causal-LM folder")
    ap.add_argument("--data", default=str(REPO / "data/banking77_answers/test.jsonl"))
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--requests", default="6,16", help="requests per level (same order)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--port", type=int, default=8931)
    ap.add_argument("--out", default="")
    return ap.parse_args()


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    import httpx

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    fh = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:3]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"not ready: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def one(url: str, prompt: str, n: int) -> dict[str, Any]:
    """One streamed request: time to the first text chunk, total time, the text."""
    import httpx

    t0 = time.perf_counter()
    first = None
    text = ""
    body = {"prompt": prompt, "max_new_tokens": n, "stream": True}
    with (
        httpx.Client(timeout=600) as c,
        c.stream("POST", url + "/v1/generate", json=body) as r,
    ):
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("text"):
                if first is None:
                    first = time.perf_counter() - t0
                text += event["text"]
    return {"ttft": first if first is not None else time.perf_counter() - t0,
            "seconds": time.perf_counter() - t0, "text": text}  # fmt: skip


def level(url: str, prompts: list[str], clients: int, requests: int, n: int) -> dict[str, Any]:
    """`requests` prompts shared by `clients` threads, each sending its next when answered."""
    todo = list(range(requests))
    lock = threading.Lock()
    results: dict[int, dict[str, Any]] = {}

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            results[i] = one(url, prompts[i % len(prompts)], n)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"wall": wall, "results": [results[i] for i in range(requests)]}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def main() -> None:
    args = parse()
    from tailorml import env

    env.setup()
    from transformers import AutoTokenizer

    from tailorml.predictors.generator import resolve_causal_folder

    folder = resolve_causal_folder(args.model)
    tok = AutoTokenizer.from_pretrained(str(folder))
    prompts = [json.loads(x)["prompt"] for x in Path(args.data).read_text().splitlines()[:64]]
    levels = [int(c) for c in args.concurrency.split(",")]
    counts = [int(c) for c in args.requests.split(",")]
    url = f"http://127.0.0.1:{args.port}"
    cmds = {
        "tailorml": [sys.executable, "-m", "tailorml.cli", "serve", args.model, "--port",
                     str(args.port), "--threads", str(args.threads), "--log-level", "warning",
                     "--timeout", "600"],
        "peer": [sys.executable, str(REPO / "benchmarks/generate_peer_server.py"), str(folder),
                 "--port", str(args.port), "--threads", str(args.threads)],
    }  # fmt: skip
    raw: dict[str, list[dict[str, Any]]] = {k: [] for k in cmds}
    texts: dict[str, dict[str, str]] = {k: {} for k in cmds}
    log = Path("/tmp/serve_generation.log")
    for rnd in range(args.rounds):
        for name, cmd in cmds.items():
            proc = start(cmd, args.port, log)
            try:
                for c, n_req in zip(levels, counts, strict=True):
                    got = level(url, prompts, c, n_req, args.max_new_tokens)
                    tokens = sum(
                        len(tok(r["text"], add_special_tokens=False)["input_ids"])
                        for r in got["results"]
                    )
                    row = {
                        "round": rnd,
                        "concurrency": c,
                        "requests": n_req,
                        "tokens": tokens,
                        "wall_s": got["wall"],
                        "tokens_per_s": tokens / got["wall"],
                        "ttft": [r["ttft"] for r in got["results"]],
                    }
                    raw[name].append(row)
                    for i, r in enumerate(got["results"]):
                        texts[name][prompts[i % len(prompts)]] = r["text"]
                    print(
                        f"round {rnd} {name:8s} c={c:<3d} {row['tokens_per_s']:7.1f} tok/s "
                        f"ttft p50 {pct(row['ttft'], 50):.2f}s",
                        flush=True,
                    )
            finally:
                stop(proc)
    table = []
    for c in levels:
        line: dict[str, Any] = {"concurrency": c}
        for name in cmds:
            rows = [r for r in raw[name] if r["concurrency"] == c]
            ttfts = [t for r in rows for t in r["ttft"]]
            line[name] = {
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
                "ttft_p50": pct(ttfts, 50),
                "ttft_p99": pct(ttfts, 99),
            }
        line["ratio"] = line["tailorml"]["tokens_per_s"] / line["peer"]["tokens_per_s"]
        table.append(line)
    same = sum(texts["tailorml"][p] == texts["peer"].get(p) for p in texts["tailorml"])
    flags = env.cpu_flags()
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{env.cpu_name()}, {os.cpu_count()} cores",
        "cpu_flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")},
        "args": vars(args),
        "table": table,
        "same_greedy_text": f"{same}/{len(texts['tailorml'])}",
        "raw": raw,
    }
    print(json.dumps({k: out[k] for k in ("date", "cpu_flags", "table", "same_greedy_text")},
                     indent=1))  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
