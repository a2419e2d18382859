"""report.md with PNG plots: loss and metric curves, confusion matrix, per-class scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tailorml.files import atomic_write_text
from tailorml.tasks.heads import (
    HeadSpec,
    curve_metrics,
    file_suffix,
    head_metrics,
    heads_summary,
    section_title,
)
from tailorml.track.logger import read_metrics


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dir: Path, plots: Path, metric_names: list[str]) -> list[str]:
    rows = read_metrics(run_dir)
    made: list[str] = []
    train = [r for r in rows if r["split"] == "train" and "loss" in r]
    ev = [r for r in rows if r["split"] == "eval"]
    stage = [r for r in rows if r["split"] == "contrastive"]  # train/contrastive.py
    if not train and not ev and not stage:
        return made
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if stage:
        ax.plot([r["step"] for r in stage], [r["loss"] for r in stage], label="contrastive loss")
    if ev:
        ax.plot([r["step"] for r in ev], [r["loss"] for r in ev], "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "loss.png", dpi=110)
    plt.close(fig)
    made.append("loss.png")
    names = [m for m in metric_names if m != "loss" and ev and m in ev[0]]
    if ev and names:
        fig, ax = plt.subplots(figsize=(7, 4))
        for m in names:
            ax.plot([r["step"] for r in ev], [r[m] for r in ev], "o-", label=m)
        ax.set_xlabel("step")
        ax.set_title("Eval metrics")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(plots / "eval_metrics.png", dpi=110)
        plt.close(fig)
        made.append("eval_metrics.png")
    return made


def plot_confusion(cm: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    import numpy as np

    plt = _plt()
    arr = np.asarray(cm, dtype=float)
    norm = arr / np.maximum(arr.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    size = min(4 + 0.25 * n, 22)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    fs = 9 if n <= 20 else 5
    ax.set_xticklabels(labels, rotation=90, fontsize=fs)
    ax.set_yticklabels(labels, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title + " (rows normalised)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if arr[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, int(arr[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class(per_class: dict[str, dict[str, float]], path: Path, title: str) -> None:
    import numpy as np

    plt = _plt()
    names = list(per_class)
    n = len(names)
    y = np.arange(n)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * n + 1)))
    h = 0.27
    for k, (metric, color) in enumerate(
        (("precision", "#4c72b0"), ("recall", "#dd8452"), ("f1", "#55a868"))
    ):
        ax.barh(
            y + (k - 1) * h, [per_class[c][metric] for c in names], h, label=metric, color=color
        )
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=9 if n <= 20 else 6)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def size_lines(tr: dict[str, Any]) -> list[str]:
    """The parameters and peak-memory line of a report, when the run recorded them."""
    if "trainable_params" not in tr:
        return []
    return [
        f"- parameters: {tr['trainable_params']:,} trained of {tr['total_params']:,} "
        f"({tr['trainable_percent']:.2f}%); peak memory {tr['peak_memory_mb']:,.0f} MB "
        f"({tr['peak_memory_kind']}); training took {tr['train_seconds']:.0f} s"
    ]


def write_report(
    run_dir: Path,
    name: str,
    base: str,
    heads: list[HeadSpec],
    results: dict[str, Any],
    splits: dict[str, Any],
) -> Path:
    """report.md of a run: the loss and metric curves, then per head (one section per named head;
    a single-task run has one unnamed head) its metrics table, confusion matrix and per-class
    scores on the test split. `splits`: head name -> its Splits."""
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    made = plot_curves(run_dir, plots, curve_metrics(heads, results["eval"]))
    tr = results["train"]
    lines = [
        f"# Run report: {name}",
        "",
        f"- {heads_summary(heads, base)}",
        f"- steps: {tr['steps']}, best step: {tr['best_step']} (by eval {tr['metric_for_best']}),"
        f" stopped by: {tr['stopped_by']}",
    ]
    if tr.get("contrastive"):  # train/contrastive.py: the stage in place of fine-tuning
        c = tr["contrastive"]
        first, last = c["loss_first_last"]
        lines.append(
            f"- contrastive stage: {c['steps']} steps of {c['batch']} rows at lr {c['lr']}, "
            f"loss {first} -> {last}; then the output layer fitted on its features (probe.json)"
        )
    if results.get("candidates"):  # train/frozen.py: the frozen encoder as a candidate
        lines.append(f"- {results['candidates']['why']}")
    lines += size_lines(tr)
    lines.append("")
    lines += [f"![{m}](plots/{m})" for m in made]
    for head in heads:
        sp, keys, title = splits[head.name], list(head.kind.metrics), section_title(head)
        suffix, where = file_suffix(head), f"{head.name}: test" if head.name else "Test"
        lines += ["", f"## {title}" if title else "## Metrics", ""]
        lines += [
            f"train rows: {len(sp.train)}, eval rows: {len(sp.eval)}, test rows: {len(sp.test)}",
            "",
            "| split | " + " | ".join(keys) + " |",
            "|---|" + "---:|" * len(keys),
        ]
        for split in ("eval", "test"):
            m = head_metrics(results[split], head.name)
            lines.append(f"| {split} | " + " | ".join(_fmt(m[k]) for k in keys) + " |")
        test = head_metrics(results["test"], head.name)
        if test.get("per_class"):
            lines += [
                "",
                "| label | precision | recall | f1 | support |",
                "|---|---:|---:|---:|---:|",
            ]
            for label, m in test["per_class"].items():
                lines.append(
                    f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
                    f"{m['support']} |"
                )
        if "confusion_matrix" in test:
            file = f"confusion_matrix{suffix}.png"
            plot_confusion(test["confusion_matrix"], test["labels"], plots / file, where)
            lines += ["", f"![{file}](plots/{file})"]
        if test.get("per_class"):
            file = f"per_class{suffix}.png"
            plot_per_class(test["per_class"], plots / file, f"{where}: per-class scores")
            lines += ["", f"![{file}](plots/{file})"]
        for note in sp.notes:
            lines.append(f"\n_Note{f' ({head.name})' if head.name else ''}: {note}_")
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _cell(text: str, limit: int = 300) -> str:
    """Text for a markdown table cell: one line, pipes escaped, long text shortened."""
    one = " ".join(str(text).split()).replace("|", "\\|")
    return one if len(one) <= limit else one[: limit - 1] + "…"


def write_generation_report(
    run_dir: Path,
    name: str,
    base: str,
    results: dict[str, Any],
    examples: list[dict[str, Any]],
    notes: list[str],
    shown: int = 12,
) -> Path:
    """report.md of a generation run: loss curves, loss/perplexity per split, the scores of
    the generated samples, and a table of examples (prompt, reference, output)."""
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    made = plot_curves(run_dir, plots, ["perplexity"])
    tr = results["train"]
    lines = [
        f"# Run report: {name}",
        "",
        f"- task: **generation**, base model: `{base}`",
        f"- steps: {tr['steps']}, best step: {tr['best_step']} (by eval {tr['metric_for_best']}),"
        f" stopped by: {tr['stopped_by']}",
        f"- training: {tr['train_tokens_per_s']} learned tokens/s"
        f" ({'packed' if tr['packing'] else 'padded'} batches)",
    ]
    lines += size_lines(tr)
    lines.append("")
    lines += [f"![{m}](plots/{m})" for m in made]
    lines += [
        "",
        "## Metrics",
        "",
        "| split | loss | perplexity | tokens |",
        "|---|---:|---:|---:|",
    ]
    for split in ("eval", "test"):
        m = results[split]
        lines.append(f"| {split} | {m['loss']:.4f} | {m['perplexity']:.3f} | {m['tokens']} |")
    gen = results.get("generated")
    if gen:
        lines += [
            "",
            f"## Generated answers ({gen['samples']} test rows, greedy)",
            "",
            "| ROUGE-L F1 | token F1 | exact match |",
            "|---:|---:|---:|",
            f"| {gen['rouge_l']:.3f} | {gen['token_f1']:.3f} | {gen['exact_match']:.3f} |",
            "",
            "| prompt | reference | output |",
            "|---|---|---|",
        ]
        for ex in examples[:shown]:
            lines.append(
                f"| {_cell(ex['prompt'])} | {_cell(ex['reference'])} | {_cell(ex['output'])} |"
            )
    for note in notes:
        lines.append(f"\n_Note: {note}_")
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _mfu_line(tr: dict[str, Any]) -> str:
    """Model FLOPs per token and, when a device peak is known, the utilisation."""
    per = tr.get("flops_per_token")
    if not per:
        return "- model FLOPs per token: not recorded"
    head = f"- model FLOPs per token (forward + backward): {per / 1e6:,.1f} M"
    if tr.get("mfu") is None:
        return f"{head}; MFU not computed ({tr.get('peak_source', 'no device peak')})"
    return f"{head}; **MFU {100 * tr['mfu']:.1f}%** of {tr['peak_source']}"


def write_pretrain_report(run_dir: Path, name: str, base: str, results: dict[str, Any]) -> Path:
    """report.md of a pretraining run: loss and perplexity curves, held-out loss, tokens seen,
    throughput, the data, and samples (greedy continuations or masked-token predictions)."""
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    made = plot_curves(run_dir, plots, ["perplexity"])
    tr, ev, d = results["train"], results["eval"], results["data"]
    objective = tr["objective"]
    lines = [
        f"# Pretraining report: {name}",
        "",
        f"- objective: **{objective}**, model: `{base}`",
        f"- steps: {tr['steps']}, best step: {tr['best_step']} (by eval {tr['metric_for_best']}),"
        f" stopped by: {tr['stopped_by']}, processes: {tr['processes']}",
        f"- tokens seen: {tr['tokens_seen']:,}; throughput {tr['train_tokens_per_s']:,.0f} "
        "tokens/s (training time only)",
        _mfu_line(tr),
        f"- corpus: {d['files']} file(s); train {d['documents']['train']:,} documents, "
        f"{d['tokens']['train']:,} tokens, {d['blocks']['train']:,} blocks of {d['block_size']}; "
        f"held out {d['documents']['eval']:,} documents, {d['blocks']['eval']:,} blocks "
        f"({d['eval_blocks_used']} used)",
    ]
    lines += size_lines(tr)
    lines += ["", "| held-out | loss | perplexity | tokens scored |", "|---|---:|---:|---:|"]
    what = "masked tokens" if objective == "mlm" else "next tokens"
    lines.append(f"| eval | {ev['loss']:.4f} | {ev['perplexity']:.3f} | {ev['tokens']:,} {what} |")
    lines.append("")
    lines += [f"![{m}](plots/{m})" for m in made]
    samples = results.get("samples") or []
    if samples and objective == "mlm":
        lines += ["", "## Masked-token predictions (held-out text)", "",
                  "| text | answer | top 5 |", "|---|---|---|"]  # fmt: skip
        for s in samples:
            for pr in s["predictions"]:
                lines.append(
                    f"| {_cell(s['text'])} | {_cell(pr['answer'])} | "
                    f"{_cell(', '.join(pr['top5']))} |"
                )
    elif samples:
        lines += ["", "## Greedy continuations (held-out prompts)", "",
                  "| prompt | continuation |", "|---|---|"]  # fmt: skip
        for s in samples:
            lines.append(f"| {_cell(s['prompt'])} | {_cell(s['continuation'])} |")
    lines += _timeline_lines(results.get("samples_by_step") or [], objective)
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _timeline_lines(timeline: list[dict[str, Any]], objective: str) -> list[str]:
    """The same held-out sample at each evaluation during training."""
    rows = [(e["step"], s) for e in timeline for s in e.get("samples", [])]
    if not rows:
        return []
    if objective == "mlm":
        out = ["", "## The same masked sample at each evaluation", "",
               f"Text: {_cell(rows[0][1]['text'])}", "",
               "| step | answers | top 5 per mask |", "|---:|---|---|"]  # fmt: skip
        for step, s in rows:
            answers = ", ".join(pr["answer"] for pr in s["predictions"])
            tops = " / ".join(", ".join(pr["top5"]) for pr in s["predictions"])
            out.append(f"| {step} | {_cell(answers)} | {_cell(tops)} |")
        return out
    out = ["", "## The same prompt continued at each evaluation (greedy)", "",
           f"Prompt: {_cell(rows[0][1]['prompt'])}", "",
           "| step | continuation |", "|---:|---|"]  # fmt: skip
    out += [f"| {step} | {_cell(s['continuation'])} |" for step, s in rows]
    return out
