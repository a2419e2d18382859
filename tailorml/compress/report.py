"""compression.md and its plot: accuracy against batch-1 latency and against size on disk, each
with its Pareto front (standard-error bars on accuracy)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tailorml.compress.select import TEST_Z
from tailorml.files import atomic_json, atomic_write_text
from tailorml.train.progress import console

COLUMNS = [
    ("variant", "name", "{}"),
    ("chosen", "chosen", "{}"),
    ("runtime", "runtime", "{}"),
    ("size MB", "size_bytes", "{:.1f}"),
    ("b1 p50 ms", "latency_ms_b1_p50", "{:.2f}"),
    ("b1 p99 ms", "latency_ms_b1_p99", "{:.2f}"),
    ("b32 p50 ms", "latency_ms_b32_p50", "{:.1f}"),
    ("ex/s b32", "throughput_per_s_b32", "{:.0f}"),
    ("accuracy ± se", "accuracy", "{:.4f}"),
    ("macro F1", "macro_f1", "{:.4f}"),
    ("drop pts", "accuracy_drop_points", "{:+.2f}"),
    ("agree", "agreement", "{:.3f}"),
    ("test acc ± se", "test_accuracy", "{:.4f}"),
    ("test drop ± se", "test_accuracy_drop_points", "{:+.2f}"),
    ("speedup b1", "speedup_b1", "{:.2f}x"),
    ("smaller", "size_ratio", "{:.2f}x"),
    ("build s", "build_s", "{:.0f}"),
]
# A value shown with its standard error ("0.8748 ±0.0068"): the key of the error.
WITH_SE = {
    "accuracy": "accuracy_se",
    "test_accuracy": "test_accuracy_se",
    "test_accuracy_drop_points": "test_drop_se_points",
}


def cell(v: dict[str, Any], key: str, fmt: str) -> str:
    val = v.get(key)
    if val is None:
        return "-"
    if key == "size_bytes":
        val = val / 1e6
    if key == "chosen":
        return "yes" if val else ""
    se = v.get(WITH_SE.get(key, ""))
    if se is not None and not (key == "test_accuracy_drop_points" and v.get("name") == "fp32"):
        return fmt.format(val) + " ±" + fmt.format(se).lstrip("+")
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


def pareto_lines(result: dict[str, Any]) -> list[str]:
    """The Pareto fronts, each variant with its accuracy and cost."""
    by = {v["name"]: v for v in result["variants"]}
    fronts = result.get("pareto") or {}
    out = []
    for key, what, cost in (
        ("latency", "batch-1 latency", lambda v: f"{v['latency_ms_b1_p50']:.2f} ms"),
        ("size", "size on disk", lambda v: f"{v['size_bytes'] / 1e6:.1f} MB"),
    ):
        names = fronts.get(key) or []
        shown = ", ".join(f"{n} ({by[n]['accuracy']:.4f}, {cost(by[n])})" for n in names)
        out.append(f"- accuracy vs {what}: {shown}")
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
        f"{result['machine']} (flags: {result.get('cpu_flags') or 'unknown'}) at "
        f"{result['date']}."
        + "".join(
            f" int8 kernels, {k}: {v}." for k, v in (result.get("int8_kernels") or {}).items()
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(result["variants"])]
    if result.get("test_examples"):
        lines += [
            "",
            f"`accuracy` is on the eval split ({result['eval_examples']} examples), which the "
            f"budget is judged on; `test acc` on the test split ({result['test_examples']} "
            "examples), which only checks that eval's result holds: a variant whose test drop "
            f"is over the budget by more than {TEST_Z:g} standard errors is not chosen. ± is "
            "one standard error: sqrt(p(1-p)/n) for an accuracy, the paired difference's for "
            "a test drop.",
        ]
    if result.get("pareto"):
        lines += [
            "",
            "Pareto fronts (eval accuracy; no other variant is both at least as accurate and "
            "at least as fast, or as small):",
            "",
            *pareto_lines(result),
        ]
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
        "![accuracy vs latency and size](compression.png)",
        "",
    ]
    atomic_write_text(path, "\n".join(lines))


def plot(path: Path, result: dict[str, Any]) -> None:
    """Two panels: eval accuracy against batch-1 latency and against size on disk, each Pareto
    front drawn as a step line, accuracy with its standard error, the chosen variant ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs = result["variants"]
    ref = next(v for v in vs if v["name"] == "fp32")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (
        (
            "latency_ms_b1_p50",
            "latency",
            f"latency p50 at batch 1, ms ({result['threads']} thread(s))",
        ),
        ("size_bytes", "size", "size on disk, MB"),
    )
    for ax, (key, front_key, label) in zip(axes, panels, strict=True):
        scale = 1e-6 if key == "size_bytes" else 1.0
        for v in vs:
            x, y = v[key] * scale, v["accuracy"] * 100
            ax.errorbar(
                x,
                y,
                yerr=(v.get("accuracy_se") or 0.0) * 100,
                fmt="o",
                markersize=9 if v.get("chosen") else 6,
                markeredgecolor="black" if v.get("chosen") else "none",
                markeredgewidth=2,
                alpha=0.75,
                capsize=2,
            )
            ax.annotate(v["name"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
        names = (result.get("pareto") or {}).get(front_key) or []
        by = {v["name"]: v for v in vs}
        if names:
            xs = [by[n][key] * scale for n in names]
            ys = [by[n]["accuracy"] * 100 for n in names]
            ax.step(
                xs,
                ys,
                where="post",
                color="green",
                linewidth=1,
                marker="*",
                zorder=3,
                markersize=11,
                label="Pareto front",
            )
        ax.axhline(
            ref["accuracy"] * 100 - result["budget_points"],
            color="red",
            linestyle="--",
            linewidth=1,
            label=f"budget ({result['budget_points']:g} pts below fp32)",
        )
        ax.set_xlabel(label)
        ax.set_ylabel("eval accuracy, % (± 1 SE)")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title("Accuracy vs batch-1 latency")
    axes[1].set_title("Accuracy vs size on disk")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- what `tailor compress` writes and prints (every kind of run) ----


def machine() -> str:
    from tailorml import env

    return f"{env.cpu_name()}, {os.cpu_count()} cores"


def write_outputs(run: Path, result: dict[str, Any]) -> None:
    # compression.json is the list of variants (each with `chosen`); the run-level summary
    # (choice, message, machine, tolerances) sits beside it.
    atomic_json(run / "compression.json", result["variants"])
    atomic_json(
        run / "compression_summary.json", {k: v for k, v in result.items() if k != "variants"}
    )
    write_markdown(run / "compression.md", result)
    plot(run / "compression.png", result)


def print_table(
    result: dict[str, Any], columns: list[tuple[str, str, str]] | None = None, serve: str = ""
) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = columns or COLUMNS
    table = Table(
        title=f"Compression ({result['threads']} thread(s), {result['machine']})", show_edge=False
    )
    for head, _, _ in columns:
        left = head in ("variant", "runtime", "chosen")
        table.add_column(head, justify="left" if left else "right", no_wrap=True)
    for r in rows(result["variants"], columns):
        table.add_row(*r)
    # The table is wide; off a terminal rich would fold it to 80 columns.
    Console(stderr=True, width=max(console.width, 250)).print(table)
    console.print(result["message"], highlight=False)
    if serve == "generate":
        console.print(f'Run it: tailor generate {result["chosen_path"]} -p "..."', highlight=False)
    else:
        console.print(f"Serve it: tailor serve {result['chosen_path']}", highlight=False)
    console.print(f"Report: {result['run_dir']}/compression.md", highlight=False)
