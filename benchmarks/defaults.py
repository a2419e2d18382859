"""Old fixed defaults vs chosen defaults vs the frozen-encoder floor, on the same splits.

For each data set: (a) the engine's old defaults (lr 5e-5, 3 epochs, 6% warmup, no early stopping,
first-token pooling, random output layer; the best evaluated checkpoint kept, as the engine always
did), (b) the chosen defaults (train/auto.py: lr, epochs and warmup left out; `new-mean`: with the
packaged encoder's tokens averaged, models/pooling.py; `new-probe`: averaged, and the output layer
fitted on the frozen features first, train/probe.py), (c) mean-pooled embeddings of the same
frozen encoder + scikit-learn logistic regression (the floor every default run must beat).
Selection (early stopping, best checkpoint, C of the regression) uses an eval split held out of
train; the reported test split is never used to choose. Prints a table and writes JSON. Finished
(set, mode) entries already in --out are kept, and an unfinished fine-tuning run continues from its
last checkpoint, so an interrupted benchmark resumes with the same command (the wall time of a
resumed run then counts only its last part; --fresh starts everything again).

    python benchmarks/defaults.py --sets finsent banking77 fintopic authors \\
        --out benchmarks/results/defaults.json
    python benchmarks/defaults.py --base mpnet --sets banking77 --modes floor new \\
        --out benchmarks/results/defaults_mpnet.json      # the larger packaged encoder
    python benchmarks/defaults.py --sets finsent --modes tuned --out benchmarks/results/tuned.json
    python benchmarks/defaults.py --sets finsent --modes new tuned-best --seed 1 \
        --out benchmarks/results/tuned.json     # (b) and the study's best values on another seed
    python benchmarks/defaults.py --sets banking77-10shot authors-50shot \
        --modes floor old new tuned --out benchmarks/results/fewshot.json   # a few hundred rows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
# name -> (base config, test file; eval = a seeded 10% split of train)
SETS = {
    "finsent": ("configs/finsent.yaml", "data/twitter_fin_sentiment/sent_valid.csv"),
    "fintopic": ("configs/fintopic.yaml", "data/twitter_fin_topic/topic_valid.csv"),
    "banking77": ("configs/banking77.yaml", "data/banking77/test.csv"),
    # Not in view when the defaults were written (built afterwards: benchmarks/make_authors.py)
    "authors": ("configs/authors.yaml", "data/gutenberg_authors/test.csv"),
}
# A few hundred rows: K training rows per label drawn from a set above (one fixed draw, whatever
# --seed), tested on that set's whole test file.
FEW_SHOT = {
    "banking77-10shot": ("banking77", 10),
    "authors-50shot": ("authors", 50),
    # Added to judge `train.frozen_candidate` on draws no default was chosen with (2026-12-06)
    "fintopic-20shot": ("fintopic", 20),
    "finsent-100shot": ("finsent", 100),
    # Added to judge `train.contrastive: auto` on draws none of its settings was chosen with
    "banking77-5shot": ("banking77", 5),
    "fintopic-10shot": ("fintopic", 10),
}


# Column (c): a `tailor tune` study per set, selected on the eval split like everything else.
# The epoch budget and early stopping stay the engine's choice (as in "new"), so a trial with a
# poor learning rate ends early; the median pruner stops the unpromising ones sooner still.
TUNE_SPACE = {
    "train.lr": {"low": 1e-5, "high": 5e-4, "log": True},
    "train.batch_size": {"choices": [16, 32, 64]},
    "train.warmup_ratio": {"low": 0.0, "high": 0.2},
    "model.dropout": {"low": 0.0, "high": 0.3},
}
TUNE_TRIALS = 20
MODES = [
    "floor",
    "contrastive",
    "old",
    "new",
    "auto",
    "new-mean",
    "new-probe",
    "new-cool",
    "new-llrd",
    "new-fp32",
    "new-head10",
    "new-frozen",
    "new-metric-only",
    "new-patience3",
    "tuned",
    "tuned-best",
]


def seed_suffix(seed: int) -> str:
    """Run folders and result keys of another seed than the usual 42 end in -seedN."""
    return f"-seed{seed}" if seed != 42 else ""


def run_config(
    name: str,
    mode: str,
    out: Path,
    limit: int | None,
    trials: int = TUNE_TRIALS,
    base: str | None = None,
    seed: int = 42,
    best_params: dict[str, Any] | None = None,
) -> Any:
    from tailorml.config.load import apply_overrides, read_yaml, validate_mapping

    parent, shots = FEW_SHOT.get(name, (name, 0))
    cfg_path, test = SETS[parent]
    raw = read_yaml(REPO / cfg_path)
    tag = f"{name}-{mode}" + (f"-{base}" if base else "") + seed_suffix(seed)
    raw["name"] = tag
    raw["output_dir"] = str(out / tag)
    if base:
        raw["model"]["base"] = base
    raw["data"]["eval"] = None
    raw["data"]["test"] = str(REPO / test)
    raw["data"]["train"] = str(REPO / raw["data"]["train"])
    if shots:
        train_file = out / f"{name}-train.csv"
        few_shot(
            Path(raw["data"]["train"]), raw["data"].get("label_column", "label"), shots, train_file
        )
        raw["data"]["train"] = str(train_file)
    if limit:
        raw["data"]["limit"] = limit
    # the seed also draws the eval split, so another seed repeats selection as well as training
    train = {"batch_size": raw.get("train", {}).get("batch_size", 32), "seed": seed}
    if mode != "auto":  # fine-tuning, as measured before the contrastive stage (2026-12-06)
        train["contrastive"] = False
    if mode == "old":
        train.update(lr=5e-5, epochs=3)
    if mode == "new-mean":  # the packaged encoder's tokens averaged, the output layer random
        raw["model"].update(pooling="mean", head_init="random")
    if mode == "new-probe":  # averaged, and the output layer fitted on the frozen features first
        raw["model"].update(pooling="mean", head_init="probe")
    if mode == "new-cool":  # after early stopping: back to the best, the lr annealed to 0
        train["cooldown"] = True
    if mode == "new-llrd":  # layer-wise lr decay: each layer down trains at 0.8x the one above
        train["layer_lr_decay"] = 0.8
    if mode == "new-head10":  # the fresh output layer at 10x the chosen rate
        train["head_lr_scale"] = 10.0
    if mode == "new-metric-only":  # early stopping on the metric alone (as before 2026-12-06)
        train["early_stopping_loss_drop"] = None
    if mode == "new-patience3":  # early stopping waits 3 evaluations without progress, not 2
        train["early_stopping_patience"] = 3
    if mode == "new-frozen":  # the frozen encoder + a fitted output layer as a candidate
        train["frozen_candidate"] = "auto"
    if mode == "new-fp32":  # what `precision: auto` would do without native bf16 (AMX/AVX-512)
        train["precision"] = "fp32"
    raw["train"] = train  # "new": everything else left out, so the engine chooses
    if mode == "tuned-best":  # the study's best values, trained again (with --seed: another seed)
        if not best_params:
            raise SystemExit(
                f"{name}: no finished `tuned` entry in --out (or --tuned-from) to take values from"
            )
        for key, value in best_params.items():
            section, field = key.split(".", 1)
            raw.setdefault(section, {})[field] = value
    if mode == "tuned":  # (c): the best of a study; what it leaves out is chosen as in "new"
        raw["tune"] = {"space": TUNE_SPACE, "trials": trials, "seed": 0}
    cfg, problems = validate_mapping(apply_overrides(raw, []))
    assert cfg is not None, problems
    return cfg


def few_shot(source: Path, label: str, k: int, dest: Path) -> Path:
    """`k` rows per label of `source` (seed 0), in file order, written to `dest`."""
    import csv
    import random

    with source.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_label.setdefault(row[label], []).append(i)
    rng = random.Random(0)
    keep = sorted(i for idx in by_label.values() for i in rng.sample(idx, min(k, len(idx))))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields or []))
        writer.writeheader()
        writer.writerows(rows[i] for i in keep)
    tmp.replace(dest)
    return dest


def finetuned(cfg: Any) -> dict[str, Any]:
    from tailorml.recipes.finetune import finetune

    t0 = time.perf_counter()
    done = Path(cfg.output_dir) / "eval.json"
    if done.exists():  # finished, but its entry did not reach --out
        res = json.loads(done.read_text())
    else:
        res = finetune(cfg, resume=True, start_if_nothing=True)  # an unfinished run continues
    chosen = json.loads((Path(cfg.output_dir) / "auto.json").read_text())
    cand = res.get("candidates")  # train.frozen_candidate: both candidates' figures
    both = (
        {
            "kept": cand["kept"],
            **{
                f"{who}_{split}_{m}": cand[who][split].get(m)
                for who in ("fine_tuned", "frozen")
                for split in ("eval", "test")
                for m in ("accuracy", "macro_f1")
            },
            "frozen_l2": {h: v.get("l2") for h, v in cand["frozen"]["fit"]["heads"].items()},
            "frozen_fit_s": cand["frozen"]["fit"]["seconds"],
        }
        if cand
        else None
    )
    return {
        "test_accuracy": res["test"]["accuracy"],
        "test_macro_f1": res["test"]["macro_f1"],
        "eval_accuracy": res["eval"]["accuracy"],
        "steps": res["train"]["steps"],
        "best_step": res["train"]["best_step"],
        "stopped_by": res["train"]["stopped_by"],
        "cooldown_start": res["train"].get("cooldown_start"),
        "eval_best_before_cooldown": res["train"].get("best_before_cooldown"),
        "chosen": {k: v["value"] for k, v in chosen.items()},
        "candidates": both,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def tuned(cfg: Any) -> dict[str, Any]:
    """The best trial (by eval accuracy) of a TUNE_TRIALS-trial study; its test figures."""
    from tailorml.tune.study import tune

    t0 = time.perf_counter()
    study = tune(cfg)  # an interrupted study continues (its SQLite file in the study folder)
    best = study["best"]
    return {
        "test_accuracy": best["test"]["accuracy"],
        "test_macro_f1": best["test"]["macro_f1"],
        "eval_accuracy": best["value"],
        "best_trial": best["number"],
        "best_params": best["params"],
        "finished": study["finished"],
        "pruned": study["pruned"],
        "failed": study["failed"],
        # this call only (a study may span several); the trials' own time is summed below
        "wall_s": round(time.perf_counter() - t0, 1),
        # finished and pruned trials, start to end; a trial cut off and continued counts only
        # its continuation, so this is a lower bound when the study was interrupted
        "trial_seconds": round(
            sum(
                t["seconds"] or 0.0 for t in study["trials"] if t["state"] in ("complete", "pruned")
            ),
            1,
        ),
    }


def frozen_floor(cfg: Any, contrastive: bool = False) -> dict[str, Any]:
    """Mean-pooled frozen encoder embeddings + logistic regression (C chosen on eval);
    `contrastive`: the encoder trained first on the training rows (benchmarks/contrastive.py)."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, log_loss
    from transformers import AutoModel

    from tailorml.data.prepare import prepare_splits
    from tailorml.models.base import load_tokenizer, resolve_base
    from tailorml.tasks import get_task

    t0 = time.perf_counter()
    splits = prepare_splits(cfg, get_task("classification"))
    path = resolve_base(cfg.model.base)
    tok = load_tokenizer(path)
    enc = AutoModel.from_pretrained(str(path)).eval()
    stage = None
    if contrastive:
        from contrastive import train_body

        train, t1 = splits.train, time.perf_counter()
        stage = train_body(enc, tok, train.texts, list(train.labels), cfg.data.max_length,
                           cfg.train.seed)  # fmt: skip
        stage["seconds"] = round(time.perf_counter() - t1, 1)

    @torch.inference_mode()
    def embed(texts: list[str]) -> np.ndarray:
        out = []
        order = np.argsort([len(t) for t in texts])
        for i in range(0, len(texts), 128):
            idx = order[i : i + 128]
            b = tok([texts[j] for j in idx], padding=True, truncation=True,
                    max_length=cfg.data.max_length, return_tensors="pt")  # fmt: skip
            h = enc(**b).last_hidden_state  # (batch, seq, hidden)
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append(((h * m).sum(1) / m.sum(1)).numpy())
        emb = np.concatenate(out)
        res = np.empty_like(emb)
        res[order] = emb
        return res

    x = {k: embed(getattr(splits, k).texts) for k in ("train", "eval", "test")}
    y = {k: np.asarray(getattr(splits, k).labels) for k in ("train", "eval", "test")}
    best, by_c = None, []
    for c in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit(x["train"], y["train"])
        score = accuracy_score(y["eval"], clf.predict(x["eval"]))
        if best is None or score > best[0]:
            best = (score, c, clf)
        # every C's figures, for the record; only the eval accuracy above chooses
        by_c.append({
            "C": c,
            "eval_accuracy": round(float(score), 4),
            "eval_log_loss": round(float(log_loss(y["eval"], clf.predict_proba(x["eval"]),
                                                  labels=clf.classes_)), 4),
            "test_accuracy": round(float(accuracy_score(y["test"], clf.predict(x["test"]))), 4),
        })  # fmt: skip
    assert best is not None
    pred = best[2].predict(x["test"])
    return {
        "test_accuracy": float(accuracy_score(y["test"], pred)),
        "test_macro_f1": float(f1_score(y["test"], pred, average="macro")),
        "eval_accuracy": float(best[0]),
        "C": best[1],
        "by_C": by_c,
        **({"contrastive": stage} if stage else {}),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def tuned_params(name: str, row: dict[str, Any], source: Path | None) -> dict[str, Any] | None:
    """The best trial's values of set `name`'s study: from `source` if given, else from `row`."""
    if source is not None:
        row = json.loads(source.read_text())["sets"].get(name, {})
    best: dict[str, Any] | None = row.get("tuned", {}).get("best_params")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--sets",
        nargs="+",
        default=list(SETS),
        choices=[*SETS, *FEW_SHOT],
        help=f"few-shot sets (K training rows per label of a set above): {', '.join(FEW_SHOT)}",
    )
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["floor", "old", "new"],
        choices=MODES,
        help="auto: every train setting left to the engine, train.contrastive included (new: "
        "the same with train.contrastive: false, fine-tuning); contrastive: the floor with its "
        "encoder trained first by a supervised contrastive loss (benchmarks/contrastive.py); "
        "new-mean: the chosen defaults with model.pooling: mean; new-probe: with "
        "model.pooling: mean and model.head_init: probe; new-cool: with train.cooldown: true; "
        "new-llrd: with train.layer_lr_decay: 0.8; new-head10: with train.head_lr_scale: 10; "
        "new-frozen: with train.frozen_candidate: auto; new-metric-only: with "
        "train.early_stopping_loss_drop: null; new-patience3: with "
        "train.early_stopping_patience: 3; "
        "new-fp32: with train.precision: fp32 (on a "
        "CPU with native bf16, `new` trains in bf16); tuned: the best of a 20-trial `tailor tune` "
        "study (TUNE_SPACE); tuned-best: the best trial's values of the `tuned` entry in --out, "
        "trained again (with --seed to repeat (b) and (c) on other seeds and eval splits)",
    )
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-defaults"))
    ap.add_argument("--limit", type=int, default=None, help="first N rows of each file")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--trials", type=int, default=TUNE_TRIALS, help="trials of a `tuned` study")
    ap.add_argument("--fresh", action="store_true", help="ignore --out's finished entries")
    ap.add_argument(
        "--tuned-from",
        type=Path,
        default=None,
        help="take tuned-best's values from this results file's `tuned` entry (a study run "
        "elsewhere: repeat its values on another machine) rather than from --out",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=42,
        help="train.seed, which also draws the eval split (results keyed MODE-seedN unless 42)",
    )
    ap.add_argument(
        "--base", default=None, help="model.base for every run (default: each config's, minilm)"
    )
    args = ap.parse_args()
    from tailorml.env import cpu_name, speed_flags

    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {speed_flags()}",
        "base": args.base or "each config's model.base",
        "sets": {},
    }
    if args.out and args.out.exists() and not args.fresh:
        result["sets"] = json.loads(args.out.read_text())["sets"]
    for name in args.sets:
        row: dict[str, Any] = result["sets"].get(name, {})
        for mode in args.modes:
            key = mode + seed_suffix(args.seed)
            if key in row:
                print(name, key, "kept from", args.out, flush=True)
                continue
            cfg = run_config(
                name,
                "new" if mode in ("floor", "contrastive") else mode,
                args.runs,
                args.limit,
                args.trials,
                args.base,
                args.seed,
                tuned_params(name, row, args.tuned_from),
            )
            if args.fresh and mode not in ("floor", "contrastive"):  # these write no run folder
                shutil.rmtree(cfg.output_dir, ignore_errors=True)
            measure = {
                "floor": frozen_floor,
                "contrastive": lambda c: frozen_floor(c, contrastive=True),
                "tuned": tuned,
            }.get(mode, finetuned)
            row[key] = measure(cfg)
            print(name, key, json.dumps(row[key]), flush=True)
            result["sets"][name] = row
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'set':10} {'mode':14} {'test acc':>9} {'macro F1':>9} {'wall s':>8}")
    for name, row in result["sets"].items():
        for mode, r in row.items():
            print(f"{name:10} {mode:14} {r['test_accuracy']:9.4f} {r['test_macro_f1']:9.4f} "
                  f"{r['wall_s']:8.0f}")  # fmt: skip


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the run or trial saved a checkpoint first
        print(
            "\nstopped: the same command continues (entries in --out are kept; an unfinished run "
            "or study trial resumes from its checkpoint)",
            file=sys.stderr,
        )
        sys.exit(130)
