"""report.md of a recommend run, with plots: the metric by model, by user-activity bucket, and
on cold vs warm targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tailorml.apps.recommend.config import RecommendConfig
from tailorml.apps.recommend.evaluate import metrics_from_ranks
from tailorml.apps.recommend.models import activity_buckets
from tailorml.files import atomic_write_text

METRICS = ("ndcg", "recall", "mrr", "coverage")


def table(result: dict[str, Any], k: int, split: str = "test") -> list[tuple[str, dict[str, Any]]]:
    """(model, metrics) rows: the baselines, then the text model with and without fusion."""
    rows = [(name, r[split]) for name, r in result["baselines"].items()]
    rows += [(name, r[split]) for name, r in result["models"].items()]
    return rows


def format_table(result: dict[str, Any], k: int, split: str = "test") -> str:
    cols = [f"{m}@{k}" for m in METRICS] + [f"cold_ndcg@{k}", f"cold_recall@{k}"]
    lines = [f"| model ({split}) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in table(result, k, split):
        lines.append(f"| {name} | " + " | ".join(f"{m.get(c, 0.0):.4f}" for c in cols) + " |")
    return "\n".join(lines)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(
    run: Path, cfg: RecommendConfig, result: dict[str, Any], variants: dict[str, Any]
) -> None:
    plt = _plt()
    k = cfg.eval.k
    plots = run / "plots"
    plots.mkdir(exist_ok=True)
    rows = table(result, k)
    names = [n for n, _ in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(names))
    for j, m in enumerate(("ndcg", "recall", "mrr")):
        ax.bar(x + (j - 1) * 0.27, [r[f"{m}@{k}"] for _, r in rows], 0.27, label=f"{m}@{k}")
    ax.set_xticks(x, names, rotation=20)
    ax.set_title("Test metrics by model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "metric_by_model.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    bucket_lines = []
    for name, v in variants.items():
        t = v["test"]
        buckets = activity_buckets(t["_history"])
        vals = [metrics_from_ranks(t["_ranks"][m], k)[f"ndcg@{k}"] for _, m in buckets]
        ax.plot([b for b, _ in buckets], vals, marker="o", label=name)
        bucket_lines += [
            f"| {name} | {b} | {int(m.sum())} | {val:.4f} |"
            for (b, m), val in zip(buckets, vals, strict=True)
        ]
    ax.set_xlabel("user history length (events before the target)")
    ax.set_ylabel(f"test NDCG@{k}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "by_activity.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    cw = []
    for name, v in variants.items():
        t = v["test"]
        cold = t["_cold"]
        c = metrics_from_ranks(t["_ranks"][cold], k)[f"ndcg@{k}"]
        w = metrics_from_ranks(t["_ranks"][~cold], k)[f"ndcg@{k}"]
        cw.append((name, c, w))
    x = np.arange(len(cw))
    ax.bar(x - 0.2, [c for _, c, _ in cw], 0.4, label="cold items")
    ax.bar(x + 0.2, [w for _, _, w in cw], 0.4, label="warm items")
    ax.set_xticks(x, [n for n, _, _ in cw])
    ax.set_ylabel(f"test NDCG@{k}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "cold_vs_warm.png", dpi=90)
    plt.close(fig)

    d = result["data"]
    lines = [
        f"# Recommender run: {cfg.name}",
        "",
        f"Data: {d['items']} items, {d['users']} users, {d['events']} events "
        f"({d['train_events']} training; {d['bad_rows_skipped']} bad rows skipped, "
        f"{d['dropped_by_min_rating']} below `min_rating`).",
        "",
        f"Protocol: {result['protocol']['split']}; {result['protocol']['ranking']}; "
        f"cold = {result['protocol']['cold']}.",
        "",
        f"Served: **{result['served']}** (test NDCG@{k} {result['test'][f'ndcg@{k}']:.4f}).",
        "",
        "## Test metrics",
        "",
        format_table(result, k, "test"),
        "",
        "## Validation metrics (what the baselines were tuned on)",
        "",
        format_table(result, k, "valid"),
        "",
        "The text model's early stopping read these targets, and the fusion ranker was trained "
        "on them: its valid row is in-sample (benchmarks/recommend_ranker_ablation.py gives a "
        "cross-validated one).",
        "",
        "Tuning: "
        + "; ".join(
            f"{n}: chose {r['chosen']} of {r['tried']}" for n, r in result["baselines"].items()
        ),
        "",
        "![metric by model](plots/metric_by_model.png)",
        "",
        "## By user activity (test)",
        "",
        "| model | history length | users | NDCG |",
        "|---|---|---|---|",
        *bucket_lines,
        "",
        "![by activity](plots/by_activity.png)",
        "",
        "## Cold vs warm items (test)",
        "",
        "| model | cold NDCG | warm NDCG |",
        "|---|---|---|",
        *(f"| {n} | {c:.4f} | {w:.4f} |" for n, c, w in cw),
        "",
        "![cold vs warm](plots/cold_vs_warm.png)",
        "",
        f"Training time: {result['train_seconds']:.0f} s in all (text model "
        f"{result['text_model']['train_seconds']:.0f} s, item texts encoded in "
        f"{result['text_model']['encode_seconds']:.0f} s).",
        "",
    ]
    atomic_write_text(run / "report.md", "\n".join(lines))
