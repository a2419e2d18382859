"""finwatch detection figures, model-scored, when the full finwatch model is not at hand.

The shipped figures need `make finwatch` (about 45 minutes on 2 cores: 3 epochs on all 23,879
training tweets, then compression). This script gets a model-scored evaluation in about ten
minutes with the same product commands on a smaller budget:

1. a stratified random subsample of each training set (`--topic-rows`, `--sent-rows`; the
   bundled files are sorted by label, so `data.limit` would keep few classes),
2. `tailor finwatch train configs/finwatch-train.yaml` on it for `--epochs` (same model, heads,
   schedule and eval splits; it calibrates the sentiment head's temperature on the eval split),
3. `tailor finwatch evaluate` of a copy of configs/finwatch.yaml pointing at that fp32 model:
   replay labels, the model's probabilities and its argmax labels, per intensity and seed.

Resumable: a run folder that already holds a model is not trained again.

    python benchmarks/finwatch_detection.py --out runs/finwatch-small
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
TOPIC = REPO / "data/twitter_fin_topic/topic_train.csv"
SENT = REPO / "data/twitter_fin_sentiment/sent_train.csv"


def subsample(src: Path, dst: Path, n: int, seed: int) -> int:
    """n rows drawn at random within each label, in proportion to its share; shuffled."""
    with src.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = random.Random(seed)
    by: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    keep: list[dict[str, str]] = []
    for group in by.values():
        keep += rng.sample(group, max(1, round(n * len(group) / len(rows))))
    rng.shuffle(keep)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows({"text": r["text"], "label": r["label"]} for r in keep)
    return len(keep)


def tailor(*args: str) -> None:
    cmd = [sys.executable, "-m", "tailorml.cli", *args]
    print("$ tailor " + " ".join(args), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/finwatch-small"))
    ap.add_argument("--topic-rows", type=int, default=4000)
    ap.add_argument("--sent-rows", type=int, default=3500)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--hours", type=float, default=36.0)
    ap.add_argument("--surges", type=int, default=8)
    ap.add_argument("--intensities", default="0.5,1,2,5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], help="extra training override")
    ap.add_argument(
        "--no-labels", action="store_true", help="skip the replay-label rows (run separately)"
    )
    a = ap.parse_args()
    out = a.out if a.out.is_absolute() else REPO / a.out
    t0 = time.time()
    if not (out / "run" / "model" / "task.json").is_file():
        n_t = subsample(TOPIC, out / "data/topic_train.csv", a.topic_rows, 0)
        n_s = subsample(SENT, out / "data/sent_train.csv", a.sent_rows, 0)
        print(f"subsample: {n_t} topic rows, {n_s} sentiment rows", flush=True)
        tailor(
            "finwatch",
            "train",
            "configs/finwatch-train.yaml",
            f"output_dir={out / 'run'}",
            f"heads.topic.data.train={out / 'data/topic_train.csv'}",
            f"heads.sentiment.data.train={out / 'data/sent_train.csv'}",
            f"train.epochs={a.epochs}",
            *a.set,
            "--overwrite",
        )
    import yaml

    cfg = yaml.safe_load((REPO / "configs/finwatch.yaml").read_text(encoding="utf-8"))
    cfg["finwatch"]["models"]["model"] = str(out / "run" / "model")
    (out / "finwatch.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    tailor(
        "finwatch",
        "evaluate",
        str(out / "finwatch.yaml"),
        *["--streams", str(a.streams), "--hours", str(a.hours), "--surges", str(a.surges)],
        *["--intensities", a.intensities, "--seeds", a.seeds, "--out", str(out / "eval")],
        *(["--no-labels"] if a.no_labels else []),
    )
    eval_json = json.loads((out / "run" / "eval.json").read_text(encoding="utf-8"))
    print(json.dumps({"eval": eval_json, "seconds": round(time.time() - t0)}, indent=1)[:3000])


if __name__ == "__main__":
    main()
