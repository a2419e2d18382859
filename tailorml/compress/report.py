"""compression.md and the accuracy-vs-latency plot (marker area = size on disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tailorml.files import atomic_write_text

COLUMNS = [
    ("variant", "name", "{}"),
    ("chosen", "chosen", "{}"),
    ("runtime", "runtime", "{}"),
    ("size MB", "size_bytes", "{:.1f}"),
    ("b1 p50 ms", "latency_ms_b1_p50", "{:.2f}"),
    ("b1 p99 ms", "latency_ms_b1_p99", "{:.2f}"),
    ("b32 p50 ms", "latency_ms_b32_p50", "{:.1f}"),
    ("ex/s b32", "throughput_per_s_b32", "{:.0f}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("macro F1", "macro_f1", "{:.4f}"),
    ("drop pts", "accuracy_drop_points", "{:+.2f}"),
    ("agree", "agreement", "{:.3f}"),
    ("speedup b1", "speedup_b1", "{:.2f}x"),
    ("smaller", "size_ratio", "{:.2f}x"),
]


def cell(v: dict[str, Any], key: str, fmt: str) -> str:
    val = v.get(key)
    if val is None:
        return "-"
    if key == "size_bytes":
        val = val / 1e6
    if key == "chosen":
        return "yes" if val else ""
    return fmt.format(val)


# A generation run: speed in generated tokens per second, quality in eval perplexity.
GEN_COLUMNS = [
    ("variant", "name", "{}"),
    ("chosen", "chosen", "{}"),
    ("size MB", "size_bytes", "{:.1f}"),
    ("tok/s b1", "tokens_per_s_b1", "{:.1f}"),
    ("tok/s b8", "tokens_per_s_b8", "{:.1f}"),
    ("perplexity", "perplexity", "{:.4f}"),
    ("ppl change", "ppl_increase_pct", "{:+.2f}%"),
    ("speedup b1", "speedup_b1", "{:.2f}x"),
    ("speedup b8", "speedup_b8", "{:.2f}x"),
    ("smaller", "size_ratio", "{:.2f}x"),
]


def rows(
    variants: list[dict[str, Any]], columns: list[tuple[str, str, str]] | None = None
) -> list[list[str]]:
    out = []
    for v in variants:
        out.append([cell(v, key, fmt) for _, key, fmt in columns or COLUMNS])
    return out


def write_generation_markdown(path: Path, result: dict[str, Any]) -> None:
    """compression.md of a generation run."""
    head = [c[0] for c in GEN_COLUMNS]
    lines = [
        f"# Compression of {result['run_dir']} (generation)",
        "",
        f"Budget: perplexity at most {result['max_ppl_increase_pct']:g}% above fp32's. "
        f"Perplexity on the answers of {result['eval_rows']} rows ({result['eval_tokens']} "
        f"tokens, {result['eval_source']}). Speed: greedy generation of {result['new_tokens']} "
        f"tokens for each of {result['prompts']} eval prompts, at batch 1 (one prompt at a time) "
        f"and batch 8, chat template and tokenization included, warm-up excluded, median of "
        f"{result['repeats']} repetitions, {result['threads']} thread(s) (pinned). Measured on "
        f"{result['machine']} (flags: {result['cpu_flags'] or 'unknown'}) at {result['date']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(result["variants"], GEN_COLUMNS)]
    lines += [
        "",
        result["message"],
        "",
        "Speedup and size are against the fp32 model (`RUN_DIR/model`). int8 changes greedy text; "
        "the answer each variant gave to the first prompt (end of turn allowed):",
        "",
        "| variant | answer |",
        "|---|---|",
    ]
    for v in result["variants"]:
        text = " ".join(str(v.get("sample_output", "")).split()).replace("|", "\\|")
        lines.append(f"| {v['name']} | {text} |")
    lines.append("")
    atomic_write_text(path, "\n".join(lines))


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    head = [c[0] for c in COLUMNS]
    lines = [
        f"# Compression of {result['run_dir']}",
        "",
        f"Budget: accuracy drop at most {result['budget_points']:g} points. "
        f"Threads: {result['threads']} (pinned). Eval examples: {result['eval_examples']}. "
        f"Latency: {result['latency_texts']} eval texts, {result['repeats']} repetitions, "
        "warm-up excluded, tokenization included. Measured on "
        f"{result['machine']} at {result['date']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(result["variants"])]
    heads = [n for n in (result["variants"][0].get("heads") or {})]
    if heads:  # a multi-task model: accuracy above is the mean of the heads'
        lines += [
            "",
            "Multi-task model: `accuracy` and `macro F1` above are the means over the heads; "
            "`agree` is the lowest head's. Per head:",
            "",
            "| variant | " + " | ".join(f"{h} acc | {h} macro F1" for h in heads) + " |",
            "|---|" + "---:|---:|" * len(heads),
        ]
        for v in result["variants"]:
            cells = [
                f"{v['heads'][h]['accuracy']:.4f} | {v['heads'][h]['macro_f1']:.4f}" for h in heads
            ]
            lines.append(f"| {v['name']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        result["message"],
        "",
        "Speedup and size are against the fp32 PyTorch model (`RUN_DIR/model`); agreement is "
        "the share of eval predictions equal to fp32's; parity details in each "
        "`compressed/<variant>/parity.json`.",
        "",
        "![accuracy vs latency](compression.png)",
        "",
    ]
    atomic_write_text(path, "\n".join(lines))


def plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs = result["variants"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [v["size_bytes"] / 1e6 for v in vs]
    big = max(sizes) or 1.0
    for v, s in zip(vs, sizes, strict=True):
        ax.scatter(
            v["latency_ms_b1_p50"],
            v["accuracy"] * 100,
            s=40 + 900 * s / big,
            alpha=0.6,
            edgecolors="black" if v.get("chosen") else "none",
            linewidths=2,
        )
        ax.annotate(
            f"{v['name']} ({s:.0f} MB)",
            (v["latency_ms_b1_p50"], v["accuracy"] * 100),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
        )
    ref = next(v for v in vs if v["name"] == "fp32")
    ax.axhline(
        ref["accuracy"] * 100 - result["budget_points"],
        color="red",
        linestyle="--",
        linewidth=1,
        label=f"budget ({result['budget_points']:g} pts below fp32)",
    )
    ax.set_xlabel(f"latency p50 at batch 1, ms ({result['threads']} thread(s))")
    ax.set_ylabel("eval accuracy, %")
    ax.set_title("Accuracy vs latency (marker area = size on disk)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
