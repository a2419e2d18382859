"""`tailor recommend train CONFIG`: baselines tuned on the validation targets, the text-aware
model, the fusion ranker, all scored on one split; one run folder.

    OUTPUT_DIR/
      recommend.json    the config (resolved) and the data's counts: what evaluate/serve read
      items.jsonl       id, title, text, genres of every item (add-items appends)
      users.npz         every user's full history (serving's GET by user id)
      item_text.npy     the item encoder's embedding of each item's text
      encoder/          the trained item encoder (lora/finetune, when it beat frozen on valid)
      model/            the text-aware model (model.safetensors, model.json)
      item_vectors.npy  index.faiss    the served item vectors and their inner-product index
      item_stats.npz    ranker.json    the ranker's item features and weights
      cf.npz  next.npz  prev.npz   the ranker's item-to-item matrices (EASE weights, the
                        followers' and the predecessors' shares)
      eval.json  report.md  plots/
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.apps.recommend import baselines as bl
from tailorml.apps.recommend.config import RecommendConfig
from tailorml.apps.recommend.data import Events, Items, load
from tailorml.apps.recommend.evaluate import Split, evaluate, public, split_leave_one_out, tune
from tailorml.apps.recommend.models import TextRecommender, encode_texts
from tailorml.apps.recommend.ranker import (
    Fused,
    FusionRanker,
    ItemStats,
    cf_weights,
    order_matrices,
    training_rows,
)
from tailorml.errors import ConfigError
from tailorml.files import atomic_json

FORMAT = 1


def first_times(split: Split) -> np.ndarray:
    e = split.events
    out = np.full(split.n_items, np.inf)
    np.minimum.at(out, e.item[split.train], e.time[split.train])
    out[np.isinf(out)] = np.nan
    return out


def _both(model: Any, split: Split, cfg: RecommendConfig, detail: bool = False) -> dict[str, Any]:
    k, cold = cfg.eval.k, cfg.eval.cold_max_train
    return {w: evaluate(model, split, w, k, cold, detail=detail) for w in ("valid", "test")}


def run_baselines(
    split: Split, cfg: RecommendConfig, log: Callable[[str], None]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each baseline tuned on valid NDCG@k: its valid and test metrics, fit seconds, choice;
    and the tuned models by name."""
    x = split.train_matrix()
    b = cfg.baselines
    k, cold = cfg.eval.k, cfg.eval.cold_max_train
    specs: list[tuple[str, Callable[[Any], Any], list[Any]]] = [
        ("pop", lambda _: bl.Popularity().fit(x), [None]),
        ("itemknn", lambda v: bl.ItemKNN(v).fit(x), b.knn_neighbours),
        ("ease", lambda v: bl.EASE(v).fit(x), b.ease_lambdas),
        (
            "als",
            lambda v: bl.ImplicitALS(
                b.als_factors, v, b.als_alpha, b.als_iterations, cfg.train.seed
            ).fit(x),
            b.als_regs,
        ),
    ]
    out: dict[str, dict[str, Any]] = {}
    models: dict[str, Any] = {}
    for name, make, values in specs:
        if not values:
            continue
        started = time.time()
        model, value, tried = tune(make, values, split, k, cold)
        res: dict[str, Any] = {w: public(m) for w, m in _both(model, split, cfg).items()}
        res |= {"chosen": value, "tried": tried, "seconds": round(time.time() - started, 2)}
        out[name] = res
        models[name] = model
        v, t = res["valid"][f"ndcg@{k}"], res["test"][f"ndcg@{k}"]
        log(f"{name}: valid ndcg@{k} {v:.4f}, test {t:.4f} ({res['seconds']} s)")
    return out, models


def train_recommend(
    cfg: RecommendConfig,
    config_path: Path | str | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    import torch

    out = Path(cfg.output_dir)
    if out.exists() and not overwrite:
        raise ConfigError(
            f"`output_dir`: {out} exists. Pass --overwrite to replace it, or set another "
            "output_dir."
        )
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    started = time.time()
    items, events = load(cfg.data)
    split = split_leave_one_out(events, len(items))
    k = cfg.eval.k
    log(
        f"{len(items)} items, {len(events)} events of {split.n_users} users "
        f"({len(events.bad)} bad rows skipped, {events.dropped_by_rating} below min_rating); "
        f"{int((split.test >= 0).sum())} users with valid and test targets"
    )
    base, fitted = run_baselines(split, cfg, log)
    ease = fitted.get("ease")
    cf = cf_weights(ease.b_, ease.active_, len(items)) if ease is not None else None
    del fitted, ease

    t0 = time.time()
    text = encode_texts(items.texts, cfg.model.encoder, cfg.train.threads)
    encode_s = time.time() - t0
    log(f"encoded {len(items)} item texts ({encode_s:.0f} s)")

    def valid_ndcg(m: TextRecommender) -> float:
        return float(evaluate(m, split, "valid", k, cfg.eval.cold_max_train)[f"ndcg@{k}"])

    counts = split.train_counts()
    model = TextRecommender(cfg.model, cfg.train.seed).fit(
        split.train_sequences(), text, counts, validate=valid_ndcg, log=log, texts=items.texts
    )
    text = model.text_  # the trained encoder's embeddings (the frozen ones if it was frozen)
    variants: dict[str, Any] = {"text": _both(model, split, cfg, detail=True)}
    variants["text"]["seconds"] = round(model.train_seconds_, 2)
    nxt, prv = order_matrices(split.train_sequences(), len(items), cfg.ranker.sequence_window)
    stats = ItemStats.build(
        counts, first_times(split), items.genres, text, cf, nxt, prv, cfg.ranker.sequence_recent
    )
    ranker = None
    if cfg.ranker.enabled:
        t0 = time.time()
        x, y, ceiling = training_rows(model, stats, split, cfg.ranker.candidates)
        ranker = FusionRanker().fit(x, y)
        fused = Fused(model, ranker, stats, cfg.ranker.candidates)
        variants["text+fusion"] = _both(fused, split, cfg, detail=True)
        variants["text+fusion"]["seconds"] = round(time.time() - t0, 2)
        variants["text+fusion"]["valid_in_candidates"] = round(ceiling, 4)
        log(f"fusion ranker: valid targets among the candidates {ceiling:.3f}")
    served = "text+fusion" if ranker is not None else "text"
    result = {
        "valid": public(variants[served]["valid"]),
        "test": public(variants[served]["test"]),
        "served": served,
        "models": {
            name: {w: public(v[w]) for w in ("valid", "test")} | {"seconds": v["seconds"]}
            for name, v in variants.items()
        },
        "baselines": base,
        "protocol": protocol(cfg),
        "data": data_counts(items, events, split),
        "text_model": {
            "item_encoder": cfg.model.item_encoder,
            "epochs": model.history_,
            "train_seconds": round(model.train_seconds_, 2),
            "encode_seconds": round(encode_s, 2),
        },
        "train_seconds": round(time.time() - started, 2),
    }
    write_run(out, cfg, items, events, split, text, model, stats, ranker, result, variants)
    return result


def protocol(cfg: RecommendConfig) -> dict[str, Any]:
    return {
        "split": "per-user chronological leave-one-out (ties by file order): last event = test, "
        "second-to-last = valid, the rest train; users with < 3 events only train",
        "ranking": "full ranking over all items; the user's earlier items excluded",
        "k": cfg.eval.k,
        "cold": f"targets whose item has <= {cfg.eval.cold_max_train} training events",
    }


def data_counts(items: Items, events: Events, split: Split) -> dict[str, int]:
    return {
        "items": len(items),
        "users": split.n_users,
        "events": len(events),
        "train_events": int(split.train.sum()),
        "bad_rows_skipped": len(events.bad),
        "dropped_by_min_rating": events.dropped_by_rating,
    }


def save_users(path: Path, events: Events) -> None:
    """Every user's full history (all events, in protocol order) and last event time."""
    counts = np.bincount(events.user, minlength=len(events.user_ids))
    last = np.full(len(counts), np.nan)
    ends = np.cumsum(counts)
    last[counts > 0] = events.time[ends[counts > 0] - 1]
    np.savez(
        path,
        user_ids=np.array(events.user_ids, dtype=object).astype(str),
        offsets=np.r_[0, ends],
        items=events.item,
        last_time=last,
    )


def write_run(
    out: Path,
    cfg: RecommendConfig,
    items: Items,
    events: Events,
    split: Split,
    text: np.ndarray,
    model: TextRecommender,
    stats: ItemStats,
    ranker: FusionRanker | None,
    result: dict[str, Any],
    variants: dict[str, Any],
) -> None:
    """Build the folder next to `out` and rename it into place."""
    from tailorml.apps.recommend.report import write_report
    from tailorml.apps.recommend.service import write_index, write_items

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        meta = {
            "format": FORMAT,
            "config": json.loads(cfg.model_dump_json()),
            "served": result["served"],
            "data": result["data"],
        }
        atomic_json(tmp / "recommend.json", meta)
        write_items(tmp / "items.jsonl", items)
        save_users(tmp / "users.npz", events)
        np.save(tmp / "item_text.npy", text)
        model.save(tmp / "model")
        if model.encoder_ is not None:
            model.encoder_.save(tmp / "encoder")
        assert model.item_vectors_ is not None
        write_index(tmp, model.item_vectors_)
        np.savez(
            tmp / "item_stats.npz",
            counts=stats.counts,
            first_time=stats.first_time,
            genres=stats.genres,
            genre_vocab=np.array(sorted({g for gs in items.genres for g in gs}), dtype=str),
        )
        if ranker is not None:
            ranker.save(tmp / "ranker.json")
        import scipy.sparse as sp

        for name, m in (("cf", stats.cf), ("next", stats.nxt), ("prev", stats.prv)):
            if m is not None:  # the ranker's item-to-item matrices
                sp.save_npz(tmp / f"{name}.npz", m)
        atomic_json(tmp / "eval.json", result)
        write_report(tmp, cfg, result, variants)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def evaluate_run(run: Path | str) -> dict[str, Any]:
    """Score the run's text model (and its fusion) again on the protocol; the baselines'
    figures are kept from training (refitting EASE takes minutes). Writes RUN/eval.json."""
    import json as _json

    from tailorml.apps.recommend.service import Recommender

    run = Path(run)
    rec = Recommender(run)  # checks the folder
    cfg = RecommendConfig(**rec.meta["config"])
    items, events = load(cfg.data)
    split = split_leave_one_out(events, len(items))
    from tailorml.apps.recommend.models import TextRecommender

    model = TextRecommender.load(run / "model")
    text = np.load(run / "item_text.npy")[: len(items)]
    variants: dict[str, Any] = {"text": _both(model, split, cfg)}
    if rec.ranker is not None:
        n = len(items)
        cf = None if rec.stats.cf is None else rec.stats.cf[:n, :n]
        nxt = None if rec.stats.nxt is None else rec.stats.nxt[:n, :n]
        prv = None if rec.stats.prv is None else rec.stats.prv[:n, :n]
        stats = ItemStats.build(
            split.train_counts(), first_times(split), items.genres, text, cf, nxt, prv,
            rec.stats.recent,
        )  # fmt: skip
        fused = Fused(model, rec.ranker, stats, cfg.ranker.candidates)
        variants["text+fusion"] = _both(fused, split, cfg)
    old = _json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else {}
    served = "text+fusion" if rec.ranker is not None else "text"
    result = {
        **old,
        "valid": public(variants[served]["valid"]),
        "test": public(variants[served]["test"]),
        "served": served,
        "models": {
            n: {w: public(v[w]) for w in ("valid", "test")}
            | {"seconds": old.get("models", {}).get(n, {}).get("seconds")}
            for n, v in variants.items()
        },
        "baselines": old.get("baselines", {}),
    }
    atomic_json(run / "eval.json", result)
    return result
