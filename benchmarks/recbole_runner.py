"""Train and score one RecBole 1.2.1 model on atomic files; run INSIDE the RecBole venv.

    .venv-recbole/bin/python benchmarks/recbole_runner.py --data-path DIR --dataset NAME \
        --model BPR --out RESULT.json [--epochs 300] [--threads 2]

Called by benchmarks/recommend_vs_recbole.py (one process per model). RecBole does the data
loading, its time-ordered leave-one-out split (TO + LS valid_and_test), training and valid-based
early stopping (valid NDCG@10, full ranking), and its own test evaluation. Then this script
scores every valid and test target again with the best model and ranks it by tailorml's protocol
(every item, all earlier items of the user excluded, ties to the item earlier in the .item file):
those ranks (one per target, with the user and item tokens) go to RESULT.json, where the caller
turns them into metrics, cold subset included, and checks the targets are its own.

Resumable: after each validation the whole training state (model, optimizer, early-stopping
counters, the valid curve, training seconds so far and the RNG states, the data loader's
shuffling generator included) is written atomically to work-MODEL/resume.pt; a run started
again with the same settings continues from the epoch after it (a converged SASRec takes hours
on two cores, longer than a session). The file is loaded with weights_only=True and removed once
the run ends; a file from other settings is set aside and training starts afresh.

Shims (RecBole 1.2.1 predates torch 2.6 / numpy 2 / scipy 1.14; nothing in site-packages is
edited, every shim is applied here, at import, and recorded in RESULT.json):
- torch.load: torch >= 2.6 defaults to weights_only=True, and RecBole's trainer reloads its own
  best checkpoint (a dict holding its Config object and numpy RNG state) with a plain
  torch.load, which then fails. Its calls get weights_only=False when they do not say; the file
  is the one this process just wrote.
- numpy 2 removed np.float_, np.complex_ and np.unicode_; RecBole's Config reads them (its
  `compatibility_settings` re-creates np.float, np.int, ... from them) and fails at once. They are
  put back as np.float64, np.complex128, np.str_.
- scipy >= 1.12: dok_matrix no longer subclasses dict and lost the private `_update`, with which
  LightGCN builds its normalised adjacency matrix; put back as an update of its `_dict`.
- pandas is pinned below 3 in benchmarks/recbole-requirements.txt (not a shim): under pandas 3's
  copy-on-write, RecBole's `feat[field].fillna(..., inplace=True)` silently does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

SHIMS: list[str] = []


def apply_shims() -> None:
    original_load = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("weights_only", False)
        return original_load(*args, **kwargs)

    torch.load = load  # type: ignore[assignment]
    SHIMS.append("torch.load: weights_only=False unless given (RecBole reloads its checkpoint)")
    # RecBole's Config.compatibility_settings() itself re-creates np.float, np.int, ... from
    # np.float_, np.complex_, np.unicode_, which numpy 2 removed.
    for alias, value in {
        "float_": np.float64,
        "complex_": np.complex128,
        "unicode_": np.str_,
    }.items():
        if alias not in np.__dict__:
            setattr(np, alias, value)
            SHIMS.append(f"np.{alias} restored (numpy 2 removed it)")
    if not hasattr(sp.dok_matrix, "_update"):
        # LightGCN fills its adjacency with the private dok_matrix._update(dict) (an unchecked
        # dict.update), gone since dok_matrix stopped subclassing dict (scipy 1.12).
        sp.dok_matrix._update = lambda self, data: self._dict.update(data)  # type: ignore[attr-defined]
        SHIMS.append("scipy.sparse.dok_matrix._update restored (scipy >= 1.12 removed it)")


apply_shims()

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import get_model, get_trainer, init_logger, init_seed  # noqa: E402


def histories(inter: Path) -> dict[str, list[str]]:
    """Each user's items in time order, read from the .inter file we wrote."""
    rows: dict[str, list[tuple[float, str]]] = defaultdict(list)
    with open(inter, encoding="utf-8") as f:
        next(f)
        for line in f:
            u, i, t = line.rstrip("\n").split("\t")
            rows[u].append((float(t), i))
    return {u: [i for _, i in sorted(r)] for u, r in rows.items()}


@torch.no_grad()
def protocol_ranks(
    predict: Any, data: Any, dataset: Any, seqs: dict[str, list[str]], order: np.ndarray, back: int
) -> tuple[list[dict[str, Any]], int]:
    """Rank of each user's target (the event `back` from the end) by our protocol, the scores
    from `predict(interaction)` (a model's full_sort_predict)."""
    uid_f, iid_f = dataset.uid_field, dataset.iid_field
    u_tok = dataset.field2id_token[uid_f]
    i_tok = dataset.field2id_token[iid_f]
    i_id = dataset.field2token_id[iid_f]
    key = torch.as_tensor(order)
    n_items = dataset.item_num
    out: list[dict[str, Any]] = []
    mismatched = 0
    for batch in data:
        inter, _, pos_u, pos_i = batch
        scores = predict(inter).view(-1, n_items).double()
        scores[:, 0] = -torch.inf
        rb_target = {int(r): int(i) for r, i in zip(pos_u.tolist(), pos_i.tolist(), strict=True)}
        for r, uid in enumerate(inter[uid_f].tolist()):
            user = str(u_tok[uid])
            seq = seqs[user]
            target = i_id[seq[-back]]
            if rb_target.get(r) != target:
                mismatched += 1
            s = scores[r]
            hist = [i_id[i] for i in seq[: len(seq) - back]]
            s[hist] = -torch.inf
            t = s[target]
            rank = int(((s > t) | ((s == t) & (key < key[target]))).sum())
            out.append(
                {
                    "user": user,
                    "item": str(i_tok[target]),
                    "recbole_item": str(i_tok[rb_target[r]]) if r in rb_target else None,
                    "rank": rank,
                }
            )
    return out, mismatched


def save_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a kill mid-write keeps the previous state."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_state(loader: Any) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "loader": loader.generator.get_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(loader: Any, rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    loader.generator.set_state(rng["loader"])
    n = rng["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    random.setstate(rng["python"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-path", required=True, type=Path)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=300, help="RecBole's default: 300")
    ap.add_argument("--stopping-step", type=int, default=10, help="RecBole's default: 10")
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=0,
        help="stop after the first validation past this much training time (0: no cap)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=2020, help="RecBole's default: 2020")
    ap.add_argument("--set", nargs="*", default=[], help="extra RecBole settings key=yaml")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import yaml

    work = args.out.parent / f"work-{args.model}"
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # RecBole writes log/ and log_tensorboard/ under the working directory
    settings: dict[str, Any] = {
        "data_path": str(args.data_path.resolve()),
        "checkpoint_dir": str((work / "saved").resolve()),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "group_by": "user",
            "mode": "full",
        },
        "metrics": ["Recall", "MRR", "NDCG"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "use_gpu": False,
        "show_progress": False,
        "seed": args.seed,
        "reproducibility": True,
        "epochs": args.epochs,
        "stopping_step": args.stopping_step,
        "eval_step": 1,
        "worker": 0,
    }
    if args.model == "SASRec":
        settings["train_neg_sample_args"] = None  # its CE loss ranks against every item
    for kv in args.set:
        k, v = kv.split("=", 1)
        settings[k] = yaml.safe_load(v)
    config = Config(model=args.model, dataset=args.dataset, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(args.threads)  # init_seed/Config may reset it
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    saved_at: list[int] = []  # the epochs whose model became the best (RecBole saves those)
    save = trainer._save_checkpoint

    def record(epoch: int, *a: Any, **kw: Any) -> Any:
        saved_at.append(int(epoch))
        return save(epoch, *a, **kw)

    trainer._save_checkpoint = record
    curve: list[float] = []
    capped: list[bool] = []
    resumed_at: list[int] = []
    stopped: list[bool] = []  # the last validation's stop flag (early stopping or the time cap)
    before_s = 0.0  # training seconds of earlier processes of this run
    resume = work / "resume.pt"
    key = json.dumps({"model": args.model, "settings": settings}, sort_keys=True, default=str)
    if resume.is_file():
        old = torch.load(resume, weights_only=True)
        if old["key"] != key:
            resume.replace(resume.with_suffix(".other-settings.pt"))
            print(
                f"{resume}: written with other settings; set aside, starting afresh",
                file=sys.stderr,
            )
        else:
            model.load_state_dict(old["model"])
            trainer.optimizer.load_state_dict(old["optimizer"])
            trainer.start_epoch = old["epoch"] + 1
            trainer.cur_step = old["cur_step"]
            trainer.best_valid_score = old["best_valid_score"]
            trainer.best_valid_result = old["best_valid_result"]
            trainer.saved_model_file = old["saved_model_file"]
            trainer.train_loss_dict = dict(old["train_loss"])
            curve[:], saved_at[:], capped[:] = old["curve"], old["saved_at"], old["capped"]
            stopped[:] = old["stopped"]
            resumed_at[:] = [*old["resumed_at"], trainer.start_epoch]
            before_s = old["train_seconds"]
            set_rng_state(train_data, old["rng"])
            print(
                f"resumed from {resume}: epoch {trainer.start_epoch}, {before_s:.0f} s trained, "
                f"best valid {trainer.best_valid_score:.5f}",
                file=sys.stderr,
            )

    def checkpoint(epoch: int, _score: float) -> None:
        """After each validation (and the best model's save): everything needed to go on."""
        state = {
            "key": key,
            "epoch": epoch,
            "cur_step": trainer.cur_step,
            "best_valid_score": float(trainer.best_valid_score),
            "best_valid_result": {
                k: float(v) for k, v in (trainer.best_valid_result or {}).items()
            },
            "saved_model_file": trainer.saved_model_file,
            "train_loss": {int(k): float(v) for k, v in trainer.train_loss_dict.items()},
            "model": model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "curve": curve,
            "saved_at": saved_at,
            "capped": capped,
            "stopped": stopped,
            "resumed_at": resumed_at,
            "train_seconds": time.time() - t0,
            "rng": rng_state(train_data),
        }
        save_state(resume, state)

    # Valid-based early stopping stays RecBole's; a wall-clock cap (--max-seconds) is added by
    # wrapping the early_stopping function its trainer calls after each validation.
    import recbole.trainer.trainer as rt

    stop = rt.early_stopping

    def early(value: float, *a: Any, **kw: Any) -> Any:
        best, step, flag, update = stop(value, *a, **kw)
        curve.append(round(float(value), 5))
        if args.max_seconds and not flag and time.time() - t0 > args.max_seconds:
            capped.append(True)
            flag = True
        stopped[:] = [True] if flag else []
        return best, step, flag, update

    rt.early_stopping = early
    t0 = time.time() - before_s
    if stopped or trainer.start_epoch >= trainer.epochs:  # killed after training, before the end
        best_valid, best_valid_result = trainer.best_valid_score, trainer.best_valid_result
    else:
        best_valid, best_valid_result = trainer.fit(
            train_data, valid_data, saved=True, callback_fn=checkpoint
        )
    train_s = time.time() - t0
    t0 = time.time()
    test_result = trainer.evaluate(test_data, load_best_model=True)
    eval_s = time.time() - t0

    item_file = args.data_path / args.dataset / f"{args.dataset}.item"
    tokens = item_file.read_text(encoding="utf-8").split("\n")[1:]
    pos = {t: n for n, t in enumerate(x for x in tokens if x)}
    i_tok = dataset.field2id_token[dataset.iid_field]
    order = np.array([pos.get(str(t), len(pos)) for t in i_tok], dtype=np.int64)
    order[0] = len(pos) + 1  # padding
    seqs = histories(args.data_path / args.dataset / f"{args.dataset}.inter")
    seqs = {u: s for u, s in seqs.items() if len(s) >= 3}
    model.eval()
    predict = model.full_sort_predict
    valid_ranks, valid_bad = protocol_ranks(predict, valid_data, dataset, seqs, order, 2)
    test_ranks, test_bad = protocol_ranks(predict, test_data, dataset, seqs, order, 1)
    # RecBole's training split, as item counts (the caller compares them with its own), and,
    # for Pop, the test ranks of those exact counts through the same ranking code (the caller
    # compares them with tailorml's popularity baseline: same data, masks, ties, item set).
    feat = train_data.dataset.inter_feat
    train_items = feat[dataset.iid_field]
    counts = torch.bincount(train_items, minlength=dataset.item_num).double()
    list_field = dataset.iid_field + config["LIST_SUFFIX"]
    if list_field in feat:  # sequential: one row per prefix; the first event is only in a list
        first = feat[list_field][feat[config["ITEM_LIST_LENGTH_FIELD"]] == 1, 0]
        counts += torch.bincount(first, minlength=dataset.item_num).double()
    train_counts = {str(i_tok[i]): int(c) for i, c in enumerate(counts.tolist()) if i and c}
    count_ranks = None
    if args.model == "Pop":

        def by_count(inter: Any) -> torch.Tensor:
            return counts.repeat(len(inter), 1)

        count_ranks, _ = protocol_ranks(by_count, test_data, dataset, seqs, order, 1)
    result = {
        "model": args.model,
        "recbole_version": __import__("recbole").__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "shims": SHIMS,
        "settings": {k: v for k, v in settings.items() if k not in ("data_path", "checkpoint_dir")},
        "model_settings": {
            k: config[k]
            for k in (
                "embedding_size",
                "n_layers",
                "reg_weight",
                "k",
                "shrink",
                "n_heads",
                "hidden_size",
                "inner_size",
                "hidden_dropout_prob",
                "attn_dropout_prob",
                "loss_type",
                "MAX_ITEM_LIST_LENGTH",
                "learning_rate",
                "train_batch_size",
                "train_neg_sample_args",
            )
            if config[k] is not None
        },
        "n_items_ranked": int(dataset.item_num - 1),
        "n_users": int(dataset.user_num - 1),
        "train_events": int(len(train_data.dataset)),
        "train_seconds": round(train_s, 2),
        "test_eval_seconds": round(eval_s, 2),
        "best_valid_ndcg@10_recbole": float(best_valid),
        "valid_recbole": {k: float(v) for k, v in best_valid_result.items()},
        "test_recbole": {k: float(v) for k, v in test_result.items()},
        "epochs_run": len(getattr(trainer, "train_loss_dict", {})) or 1,
        "stopped_by_time_cap": bool(capped),
        "max_seconds": args.max_seconds,
        "valid_curve_ndcg@10": curve,
        "resumed_at_epochs": resumed_at,
        "best_epoch": saved_at[-1] if saved_at else None,
        "target_mismatches": {"valid": valid_bad, "test": test_bad},
        "train_item_counts": train_counts,
        "count_test_ranks": count_ranks,
        "valid_ranks": valid_ranks,
        "test_ranks": test_ranks,
    }
    args.out.write_text(json.dumps(result, indent=1))
    resume.unlink(missing_ok=True)
    print(
        f"{args.model}: train {train_s:.1f} s, RecBole test {dict(test_result)}, "
        f"target mismatches {valid_bad}/{test_bad}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
