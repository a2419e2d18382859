"""A masked LM pretrained from scratch against the same architecture from random
initialisation, both fine-tuned on the same downstream task (issue 11).

1. `tailor pretrain` a small BERT from scratch (`model.init`, its own WordPiece tokenizer) on the
   unlabeled texts of data/twitter_fin_topic/topic_train.csv (no text of it is in either valid
   file) -> OUT/mlm/model.
2. A second folder with the same config.json and tokenizer but freshly initialised weights
   (`AutoModelForMaskedLM.from_config`, seeded) -> OUT/random/model — the same architecture,
   vocabulary and tokenisation, no pretraining.
3. `tailor finetune configs/finsent.yaml model.base=FOLDER train.seed=SEED` for both folders
   and each seed (the config's hyperparameters unchanged, judged on sent_valid.csv), then a
   table of accuracy and macro-F1, mean ± std.

    python benchmarks/mlm_scratch.py --out runs/mlm-scratch --steps 1500 --seeds 1 2 3 \
        --json benchmarks/results/mlm_scratch_DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CORPUS = "data/twitter_fin_topic/topic_train.csv"
TASK = "configs/finsent.yaml"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="runs/mlm-scratch")
    ap.add_argument("--preset", default="mini", help="model.init.preset (mini: 4 x 256)")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3, help="pretraining learning rate")
    ap.add_argument("--finetune-lr", type=float, default=None, help="override train.lr")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    return ap.parse_args()


def tailor(*args: str) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = str(REPO)
    subprocess.run([sys.executable, "-m", "tailorml.cli", *args], check=True, cwd=REPO, env=env)


def pretrain(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    run = out / "mlm"
    if not (run / "eval.json").exists():
        cfg = {
            "name": "fin-mlm-scratch",
            "output_dir": str(run),
            "pretrain": {
                "objective": "mlm", "corpus": [CORPUS], "text_column": "text",
                "block_size": 64, "mask_prob": 0.15, "eval_fraction": 0.05,
                "max_eval_blocks": 200, "cache_dir": str(out / "cache"),
            },
            "tokenizer": {"type": "wordpiece", "vocab_size": a.vocab_size},
            "model": {"init": {"arch": "bert", "preset": a.preset, "max_positions": 128}},
            "train": {
                "max_steps": a.steps, "batch_size": 64, "lr": a.lr, "warmup_ratio": 0.06,
                "schedule": "cosine", "eval_every_steps": max(a.steps // 3, 1),
                "log_every_steps": 50, "seed": 42, "threads": a.threads,
            },
        }  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        path = out / "pretrain.yaml"
        path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        tailor("pretrain", str(path), "--resume-or-start")
    ev = json.loads((run / "eval.json").read_text())
    return {
        "eval_perplexity": ev["eval"]["perplexity"],
        "steps": ev["train"]["steps"],
        "tokens_seen": ev["train"]["tokens_seen"],
        "train_seconds": ev["train"]["train_seconds"],
        "parameters": ev["train"].get("parameters"),
    }


def random_twin(out: Path) -> Path:
    """The pretrained folder's architecture and tokenizer with fresh weights."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM

    src, dst = out / "mlm" / "model", out / "random" / "model"
    if (dst / "model.safetensors").exists():
        return dst
    tmp = dst.with_name(".model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    (tmp / "model.safetensors").unlink()
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(str(src)))
    model.save_pretrained(str(tmp))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def finetuned(a: argparse.Namespace, out: Path, base: Path, tag: str, seed: int) -> dict:
    run = out / f"finsent-{tag}-s{seed}"
    if not (run / "eval.json").exists():
        extra = [f"train.lr={a.finetune_lr}"] if a.finetune_lr else []
        tailor(
            "finetune", TASK, f"model.base={base}", f"train.seed={seed}", f"output_dir={run}",
            f"train.threads={a.threads}", "--resume-or-start", *extra,
        )  # fmt: skip
    ev = json.loads((run / "eval.json").read_text())["eval"]
    return {"accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"]}


def mean_std(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {sd:.4f}"


def main() -> None:
    a = parse()
    out = (REPO / a.out).resolve()
    pre = pretrain(a, out)
    bases = {"pretrained": out / "mlm" / "model", "random init": random_twin(out)}
    res = {
        tag: [finetuned(a, out, b, tag.split()[0], s) for s in a.seeds] for tag, b in bases.items()
    }
    minutes, ppl = pre["train_seconds"] / 60, pre["eval_perplexity"]
    print(
        f"\nMLM from scratch: preset {a.preset}, {pre['steps']} steps, {pre['tokens_seen']:,} "
        f"tokens, {minutes:.1f} min, held-out perplexity {ppl:.2f}"
    )
    print("| fine-tuned from | accuracy (mean ± std) | macro-F1 (mean ± std) | seeds |")
    print("|---|---:|---:|---:|")
    for tag, runs in res.items():
        acc, f1 = mean_std([r["accuracy"] for r in runs]), mean_std([r["macro_f1"] for r in runs])
        print(f"| {tag} | {acc} | {f1} | {len(runs)} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"pretrain": pre, "finetune": res}, indent=2) + "\n")


if __name__ == "__main__":
    main()
