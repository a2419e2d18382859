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


def model_size(model: Any) -> dict[str, Any]:
    """Trainable and total parameters (LoRA: adapters (+ head) of the whole), printed once."""
    from tailorml.models.lora import count_parameters, is_lora

    trainable, total = count_parameters(model)
    share = 100.0 * trainable / max(total, 1)
    how = "full fine-tuning"
    if is_lora(model):  # a causal LM has no head: its adapters alone
        heads = getattr(model.peft_config["default"], "modules_to_save", None)
        how = "LoRA adapters + head" if heads else "LoRA adapters"
    console.print(
        f"Parameters: {trainable:,} trainable of {total:,} ({share:.2f}%, {how})", highlight=False
    )
    return {"trainable_params": trainable, "total_params": total, "trainable_percent": share}


def peak_memory(device_is_cuda: bool) -> dict[str, Any]:
    """The process's peak memory so far: max RSS on CPU (`getrusage`; on Linux in KiB), the
    largest allocation by torch on CUDA. One process's (rank 0's with several)."""
    if device_is_cuda:
        import torch

        return {
            "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "peak_memory_kind": "cuda max_memory_allocated",
        }
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes
    return {"peak_memory_mb": round(rss_bytes / 2**20, 1), "peak_memory_kind": "max RSS"}
