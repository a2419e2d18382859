"""What an image-classification report adds to report.md (tailorml/train/report.py writes the
curves, metrics, confusion matrix and per-class scores): per-class accuracy and a grid of
misclassified test images, each titled with its predicted and true label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tailorml.train.report import _plt


def plot_misclassified(
    x: np.ndarray,
    gold: np.ndarray,
    pred: np.ndarray,
    score: np.ndarray,
    labels: list[str],
    path: Path,
    limit: int = 36,
) -> int:
    """A PNG grid of up to `limit` misclassified images (the most confident mistakes first);
    returns how many it shows (0: no file written)."""
    wrong = np.flatnonzero(gold != pred)
    if not len(wrong):
        return 0
    wrong = wrong[np.argsort(-score[wrong], kind="stable")][:limit]
    cols = min(6, len(wrong))
    rows = -(-len(wrong) // cols)
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        img = x[i]
        if img.shape[2] == 1:
            ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(img)
        ax.set_title(f"pred {labels[pred[i]]} ({score[i]:.2f})\ntrue {labels[gold[i]]}", fontsize=7)
    fig.suptitle("Misclassified test images (most confident first)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(wrong)


def image_section(
    run_dir: Path, test_metrics: dict[str, Any], x: np.ndarray, gold: list[int], logits: np.ndarray
) -> list[str]:
    """report.md lines: per-class accuracy on test and the misclassified grid."""
    from tailorml.evaluate.metrics import softmax

    labels = list(test_metrics.get("labels") or [])
    probs = softmax(logits)
    pred, score = probs.argmax(-1), probs.max(-1)
    g = np.asarray(gold, dtype=np.int64)
    lines = [
        "",
        "## Per-class accuracy (test)",
        "",
        "| class | accuracy | images |",
        "|---|---:|---:|",
    ]
    for k, name in enumerate(labels):
        mask = g == k
        acc = float((pred[mask] == k).mean()) if mask.any() else float("nan")
        lines.append(f"| {name} | {acc:.3f} | {int(mask.sum())} |")
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    shown = plot_misclassified(x, g, pred, score, labels, plots / "misclassified.png")
    lines += ["", "## Misclassified test images", ""]
    if shown:
        total = int((g != pred).sum())
        lines += [f"{shown} of {total} shown.", "", "![misclassified](plots/misclassified.png)"]
    else:
        lines.append("None: every test image was classified correctly.")
    return lines
