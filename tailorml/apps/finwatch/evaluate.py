"""Detection quality on replayed streams with injected surges.

Each stream runs through the real watcher (parse -> score -> store -> windows -> detector) into
its own database. Matching: an alert on topic T for the window starting at s detects a surge on T
when s lies in [window of the surge start, surge end + 2 windows). Delay (windows) = (s - start of
the window holding the surge start) / w: 0 means the alert came for the very window the surge
began in (it is raised when that window closes). Unmatched alerts are false alerts.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.apps.finwatch.config import FinwatchConfig
from tailorml.apps.finwatch.events import Event
from tailorml.apps.finwatch.pipeline import Watcher
from tailorml.apps.finwatch.replay import (
    SENT_CSV,
    SENT_HELDOUT_CSV,
    TOPIC_CSV,
    TOPIC_HELDOUT_CSV,
    make_stream,
    random_surges,
    topic_texts,
    truth_json,
)
from tailorml.apps.finwatch.scorer import Scorer, make_scorer
from tailorml.apps.finwatch.store import make_engine
from tailorml.errors import TailorError
from tailorml.files import atomic_json


class CachedScorer:
    """Scores each distinct text once (replayed streams repeat the same tweets)."""

    def __init__(self, base: Scorer, batch: int = 128):
        self.base, self.batch = base, batch
        self.topics = base.topics
        self.cache: dict[str, tuple[str, str, float]] = {}

    def prime(self, texts: list[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for i in range(0, len(todo), self.batch):
            chunk = todo[i : i + self.batch]
            evs = [Event(id=str(k), time=0.0, text=t) for k, t in enumerate(chunk)]
            self.cache.update(zip(chunk, self.base.score(evs), strict=True))

    def problem(self, event: Event) -> str | None:
        return self.base.problem(event)

    def score(self, events: list[Event]) -> list[tuple[str, str, float]]:
        self.prime([e.text for e in events])
        return [self.cache[e.text] for e in events]


MIN_POOL = 20  # fewest distinct texts a topic needs to carry injected surges (model scoring)


def model_surge_pools(scorer: Scorer) -> tuple[CachedScorer, dict[str, list[str]]]:
    """For model-scored replays: score every held-out text once, and pool, per topic, the texts
    the models score as that topic and negative (what a surge on it is made of)."""
    cached = CachedScorer(scorer)
    cached.prime(topic_texts(TOPIC_HELDOUT_CSV, SENT_HELDOUT_CSV))
    pools: dict[str, list[str]] = {}
    for text, (topic, sent, _p) in cached.cache.items():
        if sent == "negative":
            pools.setdefault(topic, []).append(text)
    return cached, pools


def score_stats(cached: CachedScorer, pools: dict[str, list[str]]) -> dict[str, Any]:
    """Per topic the model assigns: how its background (held-out topic tweets) scores and how
    the texts a surge on it is made of score: count, argmax-negative share, mean and std of
    p_negative, mean p (1 - p). What decides how far a surge moves the topic's windows."""
    import csv

    with TOPIC_HELDOUT_CSV.open(encoding="utf-8", newline="") as fh:
        background = [r["text"] for r in csv.DictReader(fh)]
    by: dict[str, list[tuple[str, float]]] = {}
    for text in background:
        topic, sent, p = cached.cache[text]
        by.setdefault(topic, []).append((sent, p))
    out = {}
    for topic in sorted(by):
        ps = np.asarray([p for _, p in by[topic]])
        pool = np.asarray([cached.cache[t][2] for t in pools.get(topic, [])])
        out[topic] = {
            "background": len(ps),
            "argmax_negative_share": round(sum(s == "negative" for s, _ in by[topic]) / len(ps), 4),
            "p_mean": round(float(ps.mean()), 4),
            "p_std": round(float(ps.std()), 4),
            "p_one_minus_p": round(float((ps * (1 - ps)).mean()), 4),
            "surge_texts": len(pool),
            "surge_p_mean": round(float(pool.mean()), 4) if len(pool) else None,
        }
    return out


def match(alerts: list[dict[str, Any]], truth: list[dict[str, Any]], w: int) -> dict[str, Any]:
    used: set[int] = set()
    delays: list[float] = []
    detected = 0
    for s in truth:
        first = math.floor(s["start"] / w) * w
        hits = [
            (a["window_start"], k)
            for k, a in enumerate(alerts)
            if a["topic"] == s["topic"] and first <= a["window_start"] < s["end"] + 2 * w
        ]
        if hits:
            detected += 1
            ws, _ = min(hits)
            delays.append((ws - first) / w)
            used.update(k for _, k in hits)
    return {
        "surges": len(truth),
        "detected": detected,
        "alerts": len(alerts),
        "true_alerts": len(used),
        "false_alerts": len(alerts) - len(used),
        "delays": delays,
    }


def separability(
    traces: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    w: int,
    days: float,
    z_on: float,
    per_day: tuple[float, ...] = (1.0, 3.0),
) -> dict[str, Any]:
    """How far surge windows stand out from normal ones under the detector's share statistic.

    Every judged topic-window of the streams is a surge window (its topic has a surge overlapping
    it), a tail window (the 2 windows after a surge, left out) or a normal one. A surge's score is
    the largest z_share of its windows. `recall_at[F]`: the share of surges whose score exceeds
    the threshold that only F x days normal windows exceed, i.e. the recall of the best single
    threshold on z_share at F false windows per day (no hysteresis, no minimum counts): what the
    statistic allows, whatever the detector's settings. Also: the surge scores' quartiles, the
    normal windows' top quantiles, and AUC (a surge's score above a normal window's z)."""
    normal: list[float] = []
    surge_z: list[float] = []
    for trace, truth in traces:
        by_key = {(r["topic"], r["window_start"]): r["z_share"] for r in trace}
        skip: set[tuple[str, float]] = set()
        for s in truth:
            first = math.floor(s["start"] / w) * w
            zs = [
                by_key[(s["topic"], ws)]
                for ws in _range(first, s["end"], w)
                if (s["topic"], ws) in by_key
            ]
            surge_z.append(max(zs) if zs else float("-inf"))
            skip.update((s["topic"], ws) for ws in _range(first, s["end"] + 2 * w, w))
        normal += [z for key, z in by_key.items() if key not in skip]
    normal.sort(reverse=True)
    out: dict[str, Any] = {"surges": len(surge_z), "normal_windows": len(normal)}
    if not surge_z or not normal:
        return out
    arr = np.asarray(normal)
    sz = np.asarray(surge_z)
    finite = sz[np.isfinite(sz)]
    recall_at = {}
    for f in per_day:
        k = int(f * days)  # that many normal windows may exceed the threshold
        thr = normal[k] if k < len(normal) else float("-inf")
        recall_at[str(f)] = float((sz > thr).mean())
    auc = float(np.mean([(arr < z).mean() + 0.5 * (arr == z).mean() for z in sz]))
    return out | {
        "recall_at_false_windows_per_day": recall_at,
        "threshold_at_1_per_day": normal[int(days)] if int(days) < len(normal) else None,
        "surge_z_quartiles": [round(float(q), 3) for q in np.quantile(finite, [0.25, 0.5, 0.75])]
        if len(finite)
        else None,
        "surges_reaching_z_on": float((sz >= z_on).mean()),
        "normal_z_quantiles": {
            q: round(float(np.quantile(arr, float(q))), 3) for q in ("0.5", "0.99", "0.999")
        },
        "auc": round(auc, 4),
    }


def _range(lo: float, hi: float, step: int) -> list[float]:
    out, x = [], float(lo)
    while x < hi:
        out.append(x)
        x += step
    return out


def run_stream(
    cfg: FinwatchConfig,
    events: list[dict[str, Any]],
    scorer: Scorer,
    db_dir: Path,
    chunk: int = 500,
    trace: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """`trace`, when given, receives the detector's figures for every judged topic-window."""
    engine = make_engine(f"sqlite:///{db_dir / 'eval.db'}")
    watcher = Watcher(cfg.model_copy(update={"db": str(engine.url)}), engine, scorer).open()
    assert watcher.detector is not None
    watcher.detector.trace = trace
    alerts: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i in range(0, len(events), chunk):
        alerts += watcher.ingest(events[i : i + chunk], "replay").alerts
    alerts += watcher.advance(final=True)
    secs = time.perf_counter() - t0
    engine.dispose()
    return alerts, {"events": len(events), "seconds": secs}


def evaluate(
    cfg: FinwatchConfig,
    streams: int = 5,
    hours: float = 48.0,
    surges_per_stream: int = 8,
    rate_per_min: float = 20.0,
    intensity: float = 1.0,
    minutes: float = 30.0,
    seed: int = 0,
    scorer: Scorer | None = None,
    progress: Callable[[str], None] | None = None,
    pools: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """`progress`, when given, gets a line per step (scoring the texts, then each stream).
    `scorer` + `pools` (from `model_surge_pools`) reuse scores across evaluations."""
    say = progress or (lambda _line: None)
    scorer = scorer or make_scorer(cfg.models)
    w = cfg.detect_window
    topics_for_surges: list[str] | None = None
    topic_csv, sent_csv = TOPIC_CSV, SENT_CSV
    if cfg.models.scorer == "model" and pools is None:
        # Replay texts the models were not trained on (the valid splits). Score every text a
        # stream can carry once (the models are deterministic per text), then inject, as surges
        # on T, texts the models themselves score as topic T and negative: the truth is then
        # defined in the models' own terms, and the background carries their errors.
        say("scoring every held-out tweet once with the model (streams repeat them)")
        scorer, pools = model_surge_pools(scorer)
    if cfg.models.scorer == "model":
        assert pools is not None
        topic_csv, sent_csv = TOPIC_HELDOUT_CSV, SENT_HELDOUT_CSV
        topics_for_surges = sorted(t for t, v in pools.items() if len(v) >= MIN_POOL)
        if not topics_for_surges:
            raise TailorError(
                f"the model scores fewer than {MIN_POOL} held-out texts as any one topic and "
                "negative, so no surge can be made of its own negatives: is it trained? "
                f"(texts per topic: { ({t: len(v) for t, v in pools.items()}) })"
            )
    totals = {"surges": 0, "detected": 0, "alerts": 0, "true_alerts": 0, "false_alerts": 0}
    delays: list[float] = []
    per_stream = []
    traces: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
    ev_total, sec_total = 0.0, 0.0
    for k in range(streams):
        rng = random.Random(seed * 1000 + k)
        start = 1767571200.0  # 2026-01-05T00:00Z
        surges = random_surges(
            hours,
            surges_per_stream,
            rng,
            start,
            minutes=minutes,
            intensity=intensity,
            topics=topics_for_surges,
        )
        events = make_stream(
            hours,
            surges,
            rate_per_min=rate_per_min,
            start=start,
            seed=seed * 1000 + k,
            window_s=w,
            surge_texts=pools,
            topic_csv=topic_csv,
            sent_csv=sent_csv,
        )
        truth = truth_json(surges)
        trace: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmp:
            alerts, perf = run_stream(cfg, events, scorer, Path(tmp), trace=trace)
        m = match(alerts, truth, w)
        traces.append((trace, truth))
        say(
            f"stream {k + 1}/{streams}: {perf['events']} events in {perf['seconds']:.0f} s, "
            f"{m['detected']}/{m['surges']} surges detected, {m['false_alerts']} false alert(s)"
        )
        for key in totals:
            totals[key] += m[key]
        delays += m["delays"]
        ev_total += perf["events"]
        sec_total += perf["seconds"]
        per_stream.append(
            {
                "seed": seed * 1000 + k,
                "start": start,
                **{k2: m[k2] for k2 in totals},
                "events": perf["events"],
                "truth": truth,
                "alerts": [
                    {
                        "topic": a["topic"],
                        "window_start": a["window_start"],
                        "figures": a["figures"],
                    }
                    for a in alerts
                ],
            }
        )
    days = streams * hours / 24
    return {
        "scorer": cfg.models.scorer,
        "models": (
            {"model": str(cfg.models.model)}
            if cfg.models.model is not None
            else {"topic": str(cfg.models.topic), "sentiment": str(cfg.models.sentiment)}
        )
        if cfg.models.scorer == "model"
        else None,
        "streams": streams,
        "hours_per_stream": hours,
        "simulated_days": days,
        "rate_per_min": rate_per_min,
        "surge_minutes": minutes,
        "surge_intensity": intensity,
        "detect_window_s": w,
        "detector": cfg.detector.model_dump(),
        **totals,
        "precision": totals["true_alerts"] / totals["alerts"] if totals["alerts"] else None,
        "recall": totals["detected"] / totals["surges"] if totals["surges"] else None,
        "median_delay_windows": statistics.median(delays) if delays else None,
        "false_alerts_per_day": totals["false_alerts"] / days,
        "events": int(ev_total),
        "pipeline_events_per_s": ev_total / sec_total if sec_total else None,
        "separability": separability(traces, w, days, cfg.detector.z_on),
        "per_stream": per_stream,
    }


METRICS = ("recall", "precision", "false_alerts_per_day", "median_delay_windows")


def _mean_std(values: list[float | None]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals)}


def evaluate_grid(
    cfg: FinwatchConfig,
    intensities: list[float],
    seeds: list[int],
    with_labels: bool = True,
    progress: Callable[[str], None] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """`evaluate` for every surge intensity x seed, for the config's scorer and (with a model,
    `with_labels`) for the replay labels too, and for the model's argmax labels (`detect_on:
    label`: what the detector judged before it read probabilities). Each row: mean and std over
    the seeds of recall, precision, false alerts per day, median delay and the separability
    figures. With a model, the held-out texts are scored once for all runs."""
    say = progress or (lambda _line: None)
    variants: list[tuple[str, FinwatchConfig]] = []
    scorer: Scorer | None = None
    pools: dict[str, list[str]] | None = None
    if cfg.models.scorer == "model":
        if with_labels:
            lab = cfg.model_copy(
                update={"models": cfg.models.model_copy(update={"scorer": "labels"})}
            )
            variants.append(("labels", lab))
        variants.append(("model", cfg.model_copy(update={"detect_on": "probability"})))
        variants.append(("model-argmax", cfg.model_copy(update={"detect_on": "label"})))
        say("scoring every held-out tweet once with the model (all runs reuse the scores)")
        scorer, pools = model_surge_pools(make_scorer(cfg.models))
    else:
        variants.append(("labels", cfg))
    rows, runs = [], []
    for name, c in variants:
        for inten in intensities:
            res_seeds = []
            for seed in seeds:
                t0 = time.perf_counter()
                model = c.models.scorer == "model"
                r = evaluate(
                    c,
                    intensity=inten,
                    seed=seed,
                    scorer=scorer if model else None,
                    pools=pools if model else None,
                    **kw,
                )
                say(
                    f"{name} {inten:g}x seed {seed}: recall {r['recall']:.3f}, "
                    f"{r['false_alerts_per_day']:.2f} false/day ({time.perf_counter() - t0:.0f} s)"
                )
                res_seeds.append(r)
                runs.append({"variant": name} | r)
            sep = [r["separability"] for r in res_seeds]
            row: dict[str, Any] = {"variant": name, "intensity": inten, "seeds": seeds}
            row |= {m: _mean_std([r[m] for r in res_seeds]) for m in METRICS}
            row["surges"] = sum(r["surges"] for r in res_seeds)
            row["separable_recall_at_1_per_day"] = _mean_std(
                [x.get("recall_at_false_windows_per_day", {}).get("1.0") for x in sep]
            )
            row["surge_median_z"] = _mean_std(
                [(x.get("surge_z_quartiles") or [None] * 3)[1] for x in sep]
            )
            row["normal_z_999"] = _mean_std(
                [x.get("normal_z_quantiles", {}).get("0.999") for x in sep]
            )
            row["auc"] = _mean_std([x.get("auc") for x in sep])
            rows.append(row)
    first = runs[0]
    return {
        "kind": "grid",
        "intensities": intensities,
        "seeds": seeds,
        "streams": first["streams"],
        "hours_per_stream": first["hours_per_stream"],
        "simulated_days_per_run": first["simulated_days"],
        "surge_minutes": first["surge_minutes"],
        "detect_window_s": first["detect_window_s"],
        "detector": cfg.detector.model_dump(),
        "models": first["models"] if cfg.models.scorer == "model" else None,
        "temperature": getattr(getattr(scorer, "base", None), "temperature", None),
        "score_stats": score_stats(scorer, pools)
        if isinstance(scorer, CachedScorer) and pools is not None
        else None,
        "rows": rows,
        "runs": runs,
    }


def _pm(cell: dict[str, Any], digits: int = 3) -> str:
    if cell["mean"] is None:
        return "-"
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def grid_table(res: dict[str, Any]) -> str:
    """The grid as a Markdown table (what `tailor finwatch evaluate` prints)."""
    head = (
        "| scorer | surge | recall | precision | false alerts / day | median delay (windows) "
        "| separable recall @ 1 false/day | surge median z | normal z 99.9% | AUC |"
    )
    lines = [head, "|---|---|" + "---:|" * 8]
    for r in res["rows"]:
        lines.append(
            f"| {r['variant']} | {r['intensity']:g}× | {_pm(r['recall'])} | {_pm(r['precision'])} "
            f"| {_pm(r['false_alerts_per_day'], 2)} | {_pm(r['median_delay_windows'], 2)} "
            f"| {_pm(r['separable_recall_at_1_per_day'])} | {_pm(r['surge_median_z'], 2)} "
            f"| {_pm(r['normal_z_999'], 2)} | {_pm(r['auc'])} |"
        )
    return "\n".join(lines)


def save_grid(res: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "finwatch_eval.json"
    atomic_json(js, res)
    (out_dir / "finwatch_eval.md").write_text(grid_table(res) + "\n", encoding="utf-8")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    names = list(dict.fromkeys(r["variant"] for r in res["rows"]))
    for name in names:
        rs = [r for r in res["rows"] if r["variant"] == name]
        x = [r["intensity"] for r in rs]
        for ax, m in zip(axes, ("recall", "false_alerts_per_day"), strict=True):
            ax.errorbar(
                x,
                [r[m]["mean"] or 0 for r in rs],
                yerr=[r[m]["std"] or 0 for r in rs],
                marker="o",
                capsize=3,
                label=name,
            )
    for ax, title in zip(axes, ("recall", "false alerts per simulated day"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("surge rate (x the topic's own rate)")
        ax.set_title(f"{title}, mean ± std over {len(res['seeds'])} seeds")
        ax.legend()
    fig.tight_layout()
    png = out_dir / "finwatch_eval.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return js, png
