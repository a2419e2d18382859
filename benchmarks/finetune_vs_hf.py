"""tailorml's fine-tuning loop against the Hugging Face Trainer, in one run.

Same model (the packaged all-MiniLM-L6-v2 with a fresh head, same seed), same data, same
tokenization (max_length), same hyperparameters (batch size, lr, linear schedule, warmup steps,
weight decay, grad clipping, epochs), same threads. Runs alternate (ours, peer, ours, peer, ...)
so that machine noise hits both; the table reports medians and the ratio.

    python benchmarks/finetune_vs_hf.py                       # 2,000 train rows, 1 epoch, 3 repeats
    python benchmarks/finetune_vs_hf.py --rows 0 --epochs 3   # the whole set, as in the quick-start

Peers: the Trainer with its default random sampler, and (--with-grouped) with
`train_sampling_strategy="group_by_length"`, its own length grouping.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", default=str(REPO / "data/twitter_fin_sentiment/sent_train.csv"))
    ap.add_argument("--eval", default=str(REPO / "data/twitter_fin_sentiment/sent_valid.csv"))
    ap.add_argument("--label-names", default="Bearish,Bullish,Neutral")
    ap.add_argument("--rows", type=int, default=2000, help="train rows (0 = all)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--with-grouped", action="store_true", help="also the Trainer's group_by_length"
    )
    ap.add_argument("--json", help="write the raw results here")
    return ap.parse_args()


def run_tailorml(args: argparse.Namespace, out: Path, warmup: int) -> dict[str, float]:
    from tailorml.config.load import validate_mapping
    from tailorml.recipes.finetune import finetune

    raw: dict[str, Any] = {
        "name": "bench",
        "output_dir": str(out),
        "data": {
            "train": args.train,
            "eval": args.eval,
            "test": args.eval,
            "label_names": args.label_names.split(","),
            "max_length": args.max_length,
        },
        "model": {"base": "minilm"},
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "warmup_steps": warmup,
            "weight_decay": 0.01,
            "max_grad_norm": 1.0,
            "seed": args.seed,
            "threads": args.threads,
            "eval_every_steps": 10**9,  # no mid-run evaluation: time the training alone
            "log_every_steps": 50,
        },
    }
    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    res = finetune(cfg)
    return {
        "samples_per_s": res["train"]["train_samples_per_s"],
        "seconds": res["train"]["train_seconds"],
        "accuracy": res["eval"]["accuracy"],
        "macro_f1": res["eval"]["macro_f1"],
    }


def run_hf(args: argparse.Namespace, out: Path, warmup: int, grouped: bool) -> dict[str, float]:
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from tailorml.config.schema import DataConfig
    from tailorml.data.examples import build_examples, infer_labels
    from tailorml.data.readers import read_table
    from tailorml.models.base import packaged_minilm_path, quiet_transformers
    from tailorml.tasks import get_task

    quiet_transformers()
    torch.set_num_threads(args.threads)
    names = args.label_names.split(",")
    d = DataConfig(label_names=names, max_length=args.max_length)
    task = get_task("classification")
    tr_table = read_table(args.train)
    labels = infer_labels(tr_table, d, task)
    train = build_examples(tr_table, d, task, labels, "train")
    ev = build_examples(read_table(args.eval), d, task, labels, "eval")
    path = str(packaged_minilm_path())
    tok = AutoTokenizer.from_pretrained(path)

    class DS(torch.utils.data.Dataset):
        def __init__(self, texts: list[str], ys: list[int]):
            self.enc = tok(texts, truncation=True, max_length=args.max_length)
            self.ys = ys

        def __len__(self) -> int:
            return len(self.ys)

        def __getitem__(self, i: int) -> dict[str, Any]:
            item = {k: v[i] for k, v in self.enc.items()}
            item["labels"] = self.ys[i]
            return item

    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    targs = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        warmup_steps=warmup,
        weight_decay=0.01,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        seed=args.seed,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if grouped else "random",
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=DS(train.texts, train.labels),
        data_collator=DataCollatorWithPadding(tok),
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    pred = trainer.predict(DS(ev.texts, ev.labels))
    yhat = np.asarray(pred.predictions).argmax(-1)
    gold = np.asarray(ev.labels)
    from sklearn.metrics import f1_score

    return {
        "samples_per_s": len(train) * args.epochs / seconds,
        "seconds": seconds,
        "accuracy": float((yhat == gold).mean()),
        "macro_f1": float(f1_score(gold, yhat, average="macro")),
    }


def main() -> None:
    args = parse()
    import csv
    import math
    import random

    from tailorml.data.readers import read_table

    table = read_table(args.train)
    if args.rows and args.rows < len(table):
        # A seeded random sample: the files are sorted by label, so the first N rows would not do.
        rows = random.Random(args.seed).sample(table.rows, args.rows)
        sample = Path(tempfile.mkdtemp()) / "train_sample.csv"
        with sample.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=table.columns)
            w.writeheader()
            w.writerows(rows)
        args.train = str(sample)
    n = len(read_table(args.train))
    warmup = int(0.06 * math.ceil(n / args.batch_size) * args.epochs)
    systems = ["tailorml", "hf_trainer"] + (["hf_trainer_grouped"] if args.with_grouped else [])
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for s in systems:
                out = Path(tmp) / f"{s}-{r}"
                if s == "tailorml":
                    res = run_tailorml(args, out, warmup)
                else:
                    res = run_hf(args, out, warmup, grouped=s.endswith("grouped"))
                runs[s].append(res)
                print(f"[repeat {r + 1}/{args.repeats}] {s}: {json.dumps(res)}", flush=True)
    med = {s: {k: statistics.median(x[k] for x in runs[s]) for k in runs[s][0]} for s in systems}
    print()
    print(
        f"rows={n} epochs={args.epochs} batch={args.batch_size} lr={args.lr} "
        f"max_length={args.max_length} threads={args.threads} repeats={args.repeats}"
    )
    print(f"{'system':<20}{'samples/s':>12}{'accuracy':>10}{'macro_f1':>10}")
    for s in systems:
        m = med[s]
        print(f"{s:<20}{m['samples_per_s']:>12.1f}{m['accuracy']:>10.4f}{m['macro_f1']:>10.4f}")
    for peer in systems[1:]:
        ratios = [
            a["samples_per_s"] / b["samples_per_s"]
            for a, b in zip(runs["tailorml"], runs[peer], strict=True)
        ]
        acc_gap = (med["tailorml"]["accuracy"] - med[peer]["accuracy"]) * 100
        print(
            f"speed ratio tailorml / {peer}: {statistics.median(ratios):.2f}x "
            f"(per-repeat {', '.join(f'{x:.2f}' for x in ratios)}); "
            f"accuracy difference {acc_gap:+.2f} points"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "runs": runs, "median": med}, indent=2)
        )


if __name__ == "__main__":
    main()
