"""tailorml's recommender against RecBole 1.2.1 on the same split, in the same run.

    make recbole-venv        # once: .venv-recbole (benchmarks/recbole-requirements.txt)
    python benchmarks/recommend_vs_recbole.py

1. Reads the data of --config (configs/recommend-movielens.yaml) with tailorml's readers, splits
   it by the protocol (docs/recommend.md) and writes it as RecBole atomic files
   (tailorml.apps.recommend.export: each event's time is its position in protocol order, so
   RecBole's time-ordered leave-one-out gives our valid and test targets exactly).
2. Runs RecBole's Pop, ItemKNN, BPR, LightGCN and SASRec, one process each, in .venv-recbole
   (benchmarks/recbole_runner.py: RecBole's loading, split, training, valid-based early stopping
   on NDCG@10 with full ranking; its model settings are RecBole's defaults unless
   --recbole-set says otherwise). Each best model's score of every target is ranked again by
   tailorml's protocol (all items, earlier items excluded, ties to the earlier item), so both
   sides are read by the same metric code, the cold subset included.
3. Checks: RecBole's valid and test targets are ours (user and item, every one), and RecBole's Pop
   gives exactly the ranks of tailorml's popularity baseline (same counts, masks, ties).
4. Runs `tailor recommend train CONFIG` on the same data (or, with --tailor-run, reads a
   run folder: then the record says it is not the same run).
5. Prints one table and the ratio text+fusion / best RecBole model (test NDCG@10); writes
   benchmarks/results/recommend_vs_recbole_<date>.json (--record) with the machine and commands.

Resumable: a RecBole model whose result is in --out is not run again (--force to redo), and
one cut off mid-training continues from its last validated epoch (recbole_runner.py);
`--only recbole|tailorml|table` runs one part.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tailorml.apps.recommend.baselines import Popularity  # noqa: E402
from tailorml.apps.recommend.config import load_recommend_config  # noqa: E402
from tailorml.apps.recommend.data import load  # noqa: E402
from tailorml.apps.recommend.evaluate import (  # noqa: E402
    Split,
    evaluate,
    metrics_from_ranks,
    split_leave_one_out,
)
from tailorml.apps.recommend.export import protocol_targets, write_atomic  # noqa: E402

MODELS = ["Pop", "ItemKNN", "BPR", "LightGCN", "SASRec"]
NAME = "ml"  # the RecBole dataset name (folder and file stem)


def machine() -> dict[str, Any]:
    from tailorml.env import machine_info

    return machine_info()


def git_commit() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return "?"


def run_recbole(args: argparse.Namespace, data: Path, out: Path, model: str) -> dict[str, Any]:
    result = out / f"{model}.json"
    sets = [s.split(":", 1)[1] for s in args.recbole_set if s.split(":", 1)[0] == model]
    if result.is_file() and not args.force:
        old = json.loads(result.read_text())
        same = (old["settings"]["epochs"], old["settings"]["stopping_step"], old.get("sets", []))
        if same == (args.epochs, args.stopping_step, sets):
            print(f"RecBole {model}: reusing {result}", file=sys.stderr)
            return old | {"reused": True}
        print(f"RecBole {model}: settings changed, running again", file=sys.stderr)
    budget = dict(b.split("=") for b in args.max_seconds)
    cmd = [
        str(args.recbole_python),
        str(REPO / "benchmarks" / "recbole_runner.py"),
        "--data-path",
        str(data.resolve()),
        "--dataset",
        NAME,
        "--model",
        model,
        "--out",
        str(result.resolve()),
        "--epochs",
        str(args.epochs),
        "--stopping-step",
        str(args.stopping_step),
        "--threads",
        str(args.threads),
        "--max-seconds",
        budget.get(model, "0"),
    ]
    if sets:
        cmd += ["--set", *sets]
    print(f"RecBole {model}: {' '.join(cmd[1:])}", file=sys.stderr)
    t0 = time.time()
    with open(out / f"{model}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = (out / f"{model}.log").read_text()[-3000:]
        raise SystemExit(f"RecBole {model} failed (rc {rc}); log {out / f'{model}.log'}:\n{tail}")
    res = json.loads(result.read_text())
    res["process_seconds"] = round(time.time() - t0, 2)
    res["command"] = " ".join(cmd)
    res["sets"] = sets
    res["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    result.write_text(json.dumps(res, indent=1))
    print(f"RecBole {model}: {res['train_seconds']} s training", file=sys.stderr)
    return res


def score_recbole(res: dict[str, Any], split: Split, items: Any, k: int, cold: int) -> dict:
    """Check RecBole's targets are ours; metrics from the ranks by our metric code."""
    out: dict[str, Any] = {}
    counts = split.train_counts()
    for which in ("valid", "test"):
        ours = protocol_targets(split, items, which)
        rows = res[f"{which}_ranks"]
        theirs = {r["user"]: r["item"] for r in rows}
        recbole_own = {r["user"]: r["recbole_item"] for r in rows}
        if theirs != ours or recbole_own != ours:
            bad = [u for u in ours if recbole_own.get(u) != ours[u]][:5]
            raise SystemExit(
                f"RecBole {res['model']}: its {which} targets differ from the protocol's "
                f"({len(theirs)} vs {len(ours)}; e.g. users {bad})"
            )
        ranks = np.array([r["rank"] for r in rows], dtype=np.int64)
        target_idx = np.array([items.index[r["item"]] for r in rows])
        is_cold = counts[target_idx] <= cold
        m = metrics_from_ranks(ranks, k) | metrics_from_ranks(ranks[is_cold], k, "cold_")
        out[which] = m | {"targets": len(ranks), "cold_targets": int(is_cold.sum())}
        out[f"_{which}_ranks"] = {r["user"]: r["rank"] for r in rows}
    return out


def check_train(res: dict[str, Any], split: Split, items: Any) -> None:
    """RecBole's training split must hold the same events per item as ours."""
    counts = split.train_counts()
    ours = {items.ids[i]: int(c) for i, c in enumerate(counts) if c}
    if res["train_item_counts"] != ours:
        bad = [i for i in ours if res["train_item_counts"].get(i) != ours[i]][:5]
        raise SystemExit(f"RecBole {res['model']}: training events per item differ (e.g. {bad})")


def check_pop(pop: dict[str, Any], split: Split, k: int, cold: int) -> dict[str, Any]:
    """The exact training counts of RecBole's split, ranked by the runner's code, must give every
    test target the rank tailorml's popularity baseline gives it (data, masks, ties, item set).
    (RecBole's Pop model itself counts an item once per batch, sampled negatives included, so
    its own scores are not these counts.)"""
    mine = evaluate(Popularity().fit(split.train_matrix()), split, "test", k, cold, detail=True)
    users, _, _, _ = split.targets("test")
    ours = {
        split.events.user_ids[int(u)]: int(r) for u, r in zip(users, mine["_ranks"], strict=True)
    }
    theirs = {r["user"]: r["rank"] for r in pop["count_test_ranks"]}
    differ = [u for u in ours if ours[u] != theirs.get(u)]
    if differ:
        u = differ[0]
        raise SystemExit(
            f"counts of RecBole's split vs tailorml pop: {len(differ)} test ranks differ "
            f"(user {u}: {theirs.get(u)} vs {ours[u]})"
        )
    return {"count_ranks_identical_to_tailorml_pop": True, "targets_compared": len(ours)}


def run_tailor(args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if args.tailor_run:
        run = Path(args.tailor_run)
        info = {"same_run": False, "run": str(run), "command": "(read from an earlier run)"}
        return json.loads((run / "eval.json").read_text()), info
    run = out / "tailor"
    cmd = [
        str(Path(sys.executable).parent / "tailor"),
        "recommend",
        "train",
        str(args.config),
        "--overwrite",
        f"output_dir={run}",
        f"train.threads={args.threads}",
        *args.overrides,
    ]
    if args.limit_users:
        cmd.append(f"data.limit_users={args.limit_users}")
    print(f"tailorml: {' '.join(cmd)}", file=sys.stderr)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    t0 = time.time()
    with open(out / "tailor.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise SystemExit(f"tailor recommend train failed (rc {rc}); see {out / 'tailor.log'}")
    wall = round(time.time() - t0, 2)
    info = {
        "same_run": True,
        "run": str(run),
        "command": " ".join(cmd),
        "wall_seconds": wall,
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / "tailor_info.json").write_text(json.dumps(info, indent=1))
    return json.loads((run / "eval.json").read_text()), info


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def table(rows: list[dict[str, Any]], k: int) -> str:
    head = (
        f"| model | valid NDCG@{k} | test NDCG@{k} | Recall@{k} | MRR@{k} | cold NDCG@{k} "
        f"| RecBole's own test NDCG@{k} | train time | epochs (best/run) |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        t, v = r["test"], r["valid"]
        lines.append(
            f"| {r['name']} | {fmt(v.get(f'ndcg@{k}'))} | {fmt(t[f'ndcg@{k}'])} "
            f"| {fmt(t[f'recall@{k}'])} | {fmt(t[f'mrr@{k}'])} | {fmt(t.get(f'cold_ndcg@{k}'))} "
            f"| {fmt(r.get('recbole_own'))} | {r['seconds']:.1f} s | {r.get('epochs', '')} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs/recommend-movielens.yaml")
    ap.add_argument("--out", type=Path, default=REPO / "runs/recommend-vs-recbole")
    ap.add_argument("--only", choices=["all", "recbole", "tailorml", "table"], default="all")
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--recbole-python", type=Path, default=REPO / ".venv-recbole/bin/python")
    ap.add_argument("--epochs", type=int, default=300, help="RecBole's epoch cap (default 300)")
    ap.add_argument(
        "--stopping-step",
        type=int,
        default=50,
        help="validations without improvement before RecBole stops (its default 10 stopped BPR "
        "at epoch 18, its best at 6, in the noise of 610 valid targets)",
    )
    ap.add_argument(
        "--max-seconds",
        nargs="*",
        default=[],
        metavar="MODEL=S",
        help="wall-clock training cap per RecBole model, e.g. SASRec=480",
    )
    ap.add_argument(
        "--recbole-set",
        nargs="*",
        default=[],
        metavar="MODEL:KEY=VALUE",
        help="RecBole settings for one model, e.g. SASRec:learning_rate=0.002",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-users", type=int, default=0, help="tiny check: first N users")
    ap.add_argument("--drop-short", action="store_true", help="users with < 3 events: drop")
    ap.add_argument("--tailor-run", help="read this run folder instead of training")
    ap.add_argument("--overrides", nargs="*", default=[], help="for tailor recommend train")
    ap.add_argument("--force", action="store_true", help="re-run RecBole models already done")
    ap.add_argument("--record", type=Path, help="result JSON (default: none for --limit-users)")
    args = ap.parse_args()

    started = datetime.now(UTC)
    mach = machine()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"data.limit_users={args.limit_users}"] if args.limit_users else []
    cfg = load_recommend_config(args.config, overrides)
    k, cold = cfg.eval.k, cfg.eval.cold_max_train
    items, events = load(cfg.data)
    split = split_leave_one_out(events, len(items))
    pairs = set(zip(events.user.tolist(), events.item.tolist(), strict=True))
    repeats = len(events) - len(pairs)
    atomic = write_atomic(split, items, out / "atomic", NAME, drop_short=args.drop_short)
    print(f"atomic files: {atomic}; repeated (user, item) events: {repeats}", file=sys.stderr)

    recbole: dict[str, dict[str, Any]] = {}
    if args.only in ("all", "recbole", "table"):
        for m in args.models:
            if args.only == "table" and not (out / "recbole" / f"{m}.json").is_file():
                continue
            (out / "recbole").mkdir(exist_ok=True)
            res = run_recbole(args, out / "atomic", out / "recbole", m)
            check_train(res, split, items)
            res |= score_recbole(res, split, items, k, cold)
            recbole[m] = res
    checks: dict[str, Any] = {"repeated_user_item_events": repeats}
    if "Pop" in recbole:
        checks |= check_pop(recbole["Pop"], split, k, cold)
    # score_recbole and check_train exit otherwise:
    checks["targets_and_train_counts_equal"] = {m: True for m in recbole}

    tailor: dict[str, Any] | None = None
    tailor_info: dict[str, Any] = {}
    if args.only in ("all", "tailorml") or (args.only == "table" and args.tailor_run):
        tailor, tailor_info = run_tailor(args, out)
    elif args.only == "table" and (out / "tailor" / "eval.json").is_file():
        tailor = json.loads((out / "tailor" / "eval.json").read_text())
        tailor_info = json.loads((out / "tailor_info.json").read_text())

    rows: list[dict[str, Any]] = []
    if tailor is not None:
        names = {"pop": "popularity", "itemknn": "item-kNN", "ease": "EASE", "als": "ALS"}
        for key, b in tailor["baselines"].items():
            rows.append(
                {
                    "name": f"tailorml {names.get(key, key)}",
                    "valid": b["valid"],
                    "test": b["test"],
                    "seconds": b["seconds"],
                    "epochs": f"tuned: {b['chosen']}",
                }
            )
        epochs = tailor.get("text_model", {}).get("epochs", [])
        for key, v in tailor["models"].items():
            secs = v["seconds"] if key == "text" else tailor["train_seconds"]
            rows.append(
                {
                    "name": f"tailorml {key}",
                    "valid": v["valid"],
                    "test": v["test"],
                    "seconds": secs,
                    "epochs": f"{len(epochs)} validations" if key == "text" else "",
                }
            )
    for m, r in recbole.items():
        rows.append(
            {
                "name": f"RecBole {m}",
                "valid": r["valid"],
                "test": r["test"],
                "recbole_own": r["test_recbole"].get(f"ndcg@{k}"),
                "seconds": r["train_seconds"],
                "epochs": f"{r['best_epoch']}/{r['epochs_run']}"
                + (" (time cap)" if r.get("stopped_by_time_cap") else ""),
            }
        )
    text = table(rows, k)
    if tailor is not None:
        text += (
            "\n\ntailorml text+fusion's time is the whole `tailor recommend train` (reading, "
            "the 4 baselines, item texts encoded, text model, ranker); RecBole's, its "
            "trainer.fit (training + a valid evaluation per epoch)."
        )
    ratio = None
    if tailor is not None and recbole:
        best = max(recbole, key=lambda m: recbole[m]["test"][f"ndcg@{k}"])
        ours = tailor["models"].get("text+fusion", tailor["models"]["text"])["test"][f"ndcg@{k}"]
        ratio = {
            "ours": "text+fusion" if "text+fusion" in tailor["models"] else "text",
            "ours_test_ndcg": ours,
            "best_recbole": best,
            "best_recbole_test_ndcg": recbole[best]["test"][f"ndcg@{k}"],
            "ratio": ours / recbole[best]["test"][f"ndcg@{k}"]
            if recbole[best]["test"][f"ndcg@{k}"]
            else None,
        }
        r = ratio["ratio"]
        text += (
            f"\n\n{ratio['ours']} / best RecBole ({best}), test NDCG@{k}: "
            f"{ours:.4f} / {ratio['best_recbole_test_ndcg']:.4f} = "
            + (f"{r:.2f}x" if r is not None else "n/a")
        )
    print(text)
    record = {
        "benchmark": "recommend_vs_recbole",
        "date": started.strftime("%Y-%m-%d"),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": mach,
        "commit": git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "repeat_with": "make recbole-venv; bash "
        "benchmarks/recommend_vs_recbole.sh (its parts: this script with --only recbole, "
        "tailorml, recbole, table)",
        "config": str(args.config),
        "data": {
            "users": split.n_users,
            "items": split.n_items,
            "events": len(events),
            "test_targets": int((split.test >= 0).sum()),
        },
        "atomic": atomic,
        "checks": checks,
        "tailorml": {"info": tailor_info, "eval": tailor} if tailor else None,
        "recbole": {
            m: {
                key: v
                for key, v in r.items()
                if not key.endswith("_ranks") and key != "train_item_counts"
            }
            for m, r in recbole.items()
        },
        "ratio": ratio,
        "table": text,
    }
    dest = args.record
    if dest is None and not args.limit_users and args.only in ("all", "table"):
        day = started.strftime("%Y-%m-%d")
        dest = REPO / "benchmarks" / "results" / f"recommend_vs_recbole_{day}.json"
    target = dest or out / "record.json"
    target.write_text(json.dumps(record, indent=1, default=str))
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
