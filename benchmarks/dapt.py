"""Domain-adaptive pretraining, measured (issue 11): does continuing the packaged MiniLM's
masked-LM training on unlabeled financial tweets help fine-tuning on financial tasks?

1. `tailor pretrain configs/pretrain-mlm-fin.yaml` (the texts of topic_train.csv, labels not
   read; no text of it is in either valid file) -> OUT/fin-mlm/model.
2. For each task (financial tweet sentiment: configs/finsent.yaml; tweet topic:
   configs/fintopic.yaml), each seed and each base (the packaged `minilm`, and OUT/fin-mlm/model):
   `tailor finetune CONFIG model.base=BASE train.seed=SEED output_dir=...` with the config's own
   hyperparameters, judged on the task's valid file (the `eval` split; the configs never select
   on it: one evaluation at the end for finsent, the best epoch for fintopic — the same for both
   bases).
3. A table of accuracy and macro-F1, mean ± std over the seeds, and the difference.

Every finished run is kept (its eval.json) and an unfinished one resumes from its last
checkpoint (`--resume-or-start`), so an interrupted benchmark continues where it stopped.
Child processes run with OMP_WAIT_POLICY=PASSIVE.

    python benchmarks/dapt.py --out runs/dapt --seeds 1 2 3 --tasks finsent fintopic \
        --json benchmarks/results/dapt_DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TASKS = {"finsent": "configs/finsent.yaml", "fintopic": "configs/fintopic.yaml"}
PRETRAIN = "configs/pretrain-mlm-fin.yaml"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="runs/dapt")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--pretrain-steps", type=int, default=None, help="override train.max_steps")
    ap.add_argument("--finetune-epochs", type=float, default=None, help="override train.epochs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--pooling",
        default="cls",
        choices=["cls", "mean"],
        help="model.pooling of every fine-tuning run, the same for both bases (the seeds "
        "measured before model.pooling existed used cls)",
    )
    ap.add_argument("--json", default=None)
    return ap.parse_args()


def tailor(*args: str) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = str(REPO)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tailorml.cli", *args], check=True, cwd=REPO, env=env)
    return time.perf_counter() - start


def pretrained(a: argparse.Namespace, out: Path) -> tuple[Path, dict[str, Any]]:
    run = out / "fin-mlm"
    if not (run / "eval.json").exists():
        extra = [f"train.max_steps={a.pretrain_steps}"] if a.pretrain_steps else []
        wall = tailor(
            "pretrain", PRETRAIN, f"output_dir={run}", f"train.threads={a.threads}",
            "--resume-or-start", *extra,
        )  # fmt: skip
        (run / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
    ev = json.loads((run / "eval.json").read_text())
    return run / "model", {
        "eval_perplexity": ev["eval"]["perplexity"],
        "steps": ev["train"]["steps"],
        "tokens_seen": ev["train"]["tokens_seen"],
        "train_seconds": ev["train"]["train_seconds"],
        "tokens_per_s": ev["train"]["train_tokens_per_s"],
    }


def finetuned(a: argparse.Namespace, out: Path, task: str, base: str, seed: int, tag: str) -> dict:
    run = out / f"{task}-{tag}-s{seed}"
    if not (run / "eval.json").exists():
        extra = [f"train.epochs={a.finetune_epochs}"] if a.finetune_epochs else []
        tailor(
            "finetune", TASKS[task], f"model.base={base}", f"train.seed={seed}",
            f"output_dir={run}", f"train.threads={a.threads}", f"model.pooling={a.pooling}",
            "--resume-or-start", *extra,
        )  # fmt: skip
    ev = json.loads((run / "eval.json").read_text())
    split = ev["eval"]
    return {
        "accuracy": split["accuracy"],
        "macro_f1": split["macro_f1"],
        "train_seconds": ev["train"].get("train_seconds"),
    }


def mean_std(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f}"


def main() -> None:
    a = parse()
    out = (REPO / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dapt_model, pre = pretrained(a, out)
    rows: dict[str, Any] = {"pretrain": pre, "tasks": {}}
    for task in a.tasks:
        per: dict[str, list[dict]] = {"minilm": [], "dapt": []}
        for seed in a.seeds:
            per["minilm"].append(finetuned(a, out, task, "minilm", seed, "minilm"))
            per["dapt"].append(finetuned(a, out, task, str(dapt_model), seed, "dapt"))
        rows["tasks"][task] = per
    minutes = pre["train_seconds"] / 60
    print(
        f"\nDAPT: {pre['steps']} MLM steps, {pre['tokens_seen']:,} tokens, {minutes:.1f} min, "
        f"held-out MLM perplexity {pre['eval_perplexity']:.2f}"
    )
    print("| task | base | accuracy (mean ± std) | macro-F1 (mean ± std) | seeds |")
    print("|---|---|---:|---:|---:|")
    for task, per in rows["tasks"].items():
        for tag, runs in per.items():
            acc = mean_std([r["accuracy"] for r in runs])
            f1 = mean_std([r["macro_f1"] for r in runs])
            print(f"| {task} | {tag} | {acc} | {f1} | {len(runs)} |")
        d_acc = [
            d["accuracy"] - m["accuracy"] for d, m in zip(per["dapt"], per["minilm"], strict=True)
        ]
        d_f1 = [
            d["macro_f1"] - m["macro_f1"] for d, m in zip(per["dapt"], per["minilm"], strict=True)
        ]
        print(
            f"| {task} | dapt − minilm (paired by seed) | {mean_std(d_acc)} | {mean_std(d_f1)} | |"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
