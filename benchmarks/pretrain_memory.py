"""`tailor pretrain` on a corpus larger than the memory it is allowed (issue 11): the corpus is
tokenized once into memory-mapped shards and blocks are read from the map, so the process's
own memory stays bounded by the model and the batch, not by the corpus.

What it does:
1. Writes a plain-text corpus of --corpus-mb megabytes (copies of tiny Shakespeare, each copy's
   lines numbered so that no two documents are equal) into --work.
2. Runs `tailor pretrain configs/pretrain-clm-shakespeare.yaml` on it in a child process (the
   corpus swapped in, a fresh shard cache, --steps steps) with its data segment capped at
   --cap-mb (RLIMIT_DATA: heap and private writable mappings, which is where a program that
   loaded the corpus or its tokens would keep them; the read-only memory map of the shards is
   page cache the kernel can drop, so it is not counted).
3. Samples the child's /proc/PID/status every 0.2 s: peak VmRSS (all resident pages, the
   mapped shard pages included) and peak RssAnon (the process's own memory), per phase
   (tokenizing, training), and prints them next to the corpus and shard sizes.

    python benchmarks/pretrain_memory.py --corpus-mb 1200 --cap-mb 1024 --steps 40 \
        --json benchmarks/results/pretrain_memory_DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/pretrain-clm-shakespeare.yaml"
SOURCE = REPO / "data/tinyshakespeare/input.txt"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus-mb", type=int, default=1200)
    ap.add_argument("--cap-mb", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/tailorml-pretrain-memory")
    ap.add_argument("--json", default=None)
    return ap.parse_args()


def write_corpus(path: Path, megabytes: int) -> int:
    text = SOURCE.read_text(encoding="utf-8").split("\n\n")
    size, copy = 0, 0
    with path.open("w", encoding="utf-8") as fh:
        while size < megabytes * 1_000_000:
            chunk = "\n\n".join(f"[{copy}.{i}] {para}" for i, para in enumerate(text)) + "\n\n"
            fh.write(chunk)
            size += len(chunk.encode("utf-8"))
            copy += 1
    return path.stat().st_size


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(val.split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


def main() -> None:
    a = parse()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpus = work / "corpus.txt"
    corpus_bytes = write_corpus(corpus, a.corpus_mb)
    cap = a.cap_mb * 1024 * 1024

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))

    cmd = [
        sys.executable, "-m", "tailorml.cli", "pretrain", str(CONFIG),
        f"pretrain.corpus=[{corpus}]", f"pretrain.cache_dir={work / 'cache'}",
        f"output_dir={work / 'run'}", f"train.max_steps={a.steps}",
        f"train.eval_every_steps={a.steps}", f"train.threads={a.threads}",
        "pretrain.max_eval_blocks=20", "pretrain.samples=1", "--overwrite",
    ]  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    env["PYTHONUNBUFFERED"] = "1"
    start = time.perf_counter()
    child = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        preexec_fn=limit,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    phase = {"now": "start"}
    peaks: dict[str, dict[str, int]] = {}

    def sample() -> None:
        while child.poll() is None:
            st = status_kb(child.pid)
            p = peaks.setdefault(phase["now"], {})
            for k, v in st.items():
                p[k] = max(p.get(k, 0), v)
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    assert child.stdout is not None
    for line in child.stdout:
        sys.stdout.write(line)
        if "tokenizing" in line or "training a" in line:
            phase["now"] = "tokenize"
        elif line.startswith("train step"):
            phase["now"] = "train"
    rc = child.wait()
    watcher.join()
    wall = time.perf_counter() - start
    shards = sum(f.stat().st_size for f in (work / "cache").rglob("*.bin"))
    ev: dict[str, Any] = {}
    if (work / "run" / "eval.json").exists():
        ev = json.loads((work / "run" / "eval.json").read_text())
    row = {
        "exit_code": rc,
        "corpus_mb": round(corpus_bytes / 1e6, 1),
        "shards_mb": round(shards / 1e6, 1),
        "cap_mb (RLIMIT_DATA)": a.cap_mb,
        "tokens_train": ev.get("data", {}).get("tokens", {}).get("train"),
        "steps": ev.get("train", {}).get("steps"),
        "wall_s": round(wall, 1),
        "peak_mb": {ph: {k: round(v / 1024, 1) for k, v in p.items()} for ph, p in peaks.items()},
    }
    print(json.dumps(row, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(row, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
