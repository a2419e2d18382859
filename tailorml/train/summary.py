"""What a training run prints: the data table before training, the results table after."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tailorml.tasks.heads import head_metrics
from tailorml.train.progress import console

if TYPE_CHECKING:
    from tailorml.data.batching import Encoded
    from tailorml.data.prepare import Splits
    from tailorml.tasks.base import Task
    from tailorml.tasks.heads import HeadSpec


def data_summary(
    task: Task, splits: Splits, enc: dict[str, Encoded], head: str = ""
) -> dict[str, Any]:
    """data_summary.json of one head, printed as a table with every split's class balance."""
    from rich.table import Table

    summary = splits.summary()
    for name, e in enc.items():
        summary["splits"][name]["truncated"] = e.n_truncated
        summary["splits"][name]["mean_tokens"] = float(e.lengths.mean()) if len(e) else 0.0
    summary["class_balance"] = splits.balance(task)
    table = Table(title=f"Data: head {head}" if head else "Data", show_edge=False)
    for col in ("split", "rows", "skipped", "truncated", "mean tokens", "source"):
        table.add_column(col)
    for name in ("train", "eval", "test"):
        s = summary["splits"][name]
        table.add_row(
            name,
            str(s["rows"]),
            str(s["bad_rows_skipped"]),
            str(s["truncated"]),
            f"{s['mean_tokens']:.1f}",
            s["source"],
        )
    console.print(table)
    for note in splits.notes:
        console.print(f"  {note}")
    bal = summary["class_balance"]
    for split in ("train", "eval", "test"):
        if bal:
            shown = ", ".join(f"{k}: {v.get(split, 0)}" for k, v in list(bal.items())[:12])
            more = f", ... ({len(bal)} labels)" if len(bal) > 12 else ""
            console.print(f"  class balance ({split}): {shown}{more}", highlight=False)
    return summary


def print_results(results: dict[str, Any], head: HeadSpec) -> None:
    from rich.table import Table

    keys = list(head.kind.metrics)
    table = Table(title=f"Results: head {head.name}" if head.name else "Results", show_edge=False)
    table.add_column("split")
    for k in keys:
        table.add_column(k, justify="right")
    for split in ("eval", "test"):
        m = head_metrics(results[split], head.name)
        table.add_row(split, *(f"{m[k]:.4f}" for k in keys))
    console.print(table)
