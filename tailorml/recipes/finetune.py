"""Fine-tune a pretrained encoder on labeled data: the whole workflow in one readable file.

    read + check data -> build model -> train (eval, checkpoint, early stop) -> best model
    -> eval.json on eval and test -> report.md with plots

Runs the same on one process, on `torchrun --nproc_per_node=N` (CPU/gloo or GPU/nccl) and on
several nodes: the global batch (`train.batch_size`) is split evenly across processes, and the loss
is normalised by the global batch, so N processes compute the same update as one.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tailorml import runtime  # noqa: F401  (sets thread/env defaults before torch loads)
from tailorml.config.load import dump_config
from tailorml.config.schema import RunConfig
from tailorml.data.batching import Encoded, collate, encode, plan_batches, shard
from tailorml.data.prepare import Splits, balance_table, prepare_splits
from tailorml.errors import ConfigError, DataError
from tailorml.evaluate.metrics import (
    DEFAULT_METRIC,
    SCALARS,
    compute_metrics,
    is_better,
    scalar_metrics,
)
from tailorml.models.base import build_model, load_tokenizer, resolve_base, write_task_json
from tailorml.models.heads import MULTITASK, HeadSpec, column_names, layout
from tailorml.track.logger import RunLogger
from tailorml.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
)
from tailorml.train.optim import build_optimizer, build_scheduler
from tailorml.train.progress import TrainProgress, console

FINISHED_MARKERS = ("eval.json", "model", "checkpoints")

# An optional training loss in place of the task's: (logits, labels, inputs, example indices into
# the train split) -> per-example loss (batch,). Used by distillation (teacher soft labels).
LossFn = Callable[[Any, Any, dict[str, Any], Any], Any]


class StopRequested:
    """Set by SIGINT/SIGTERM; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def prepare_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> Path:
    """Refuse to mix runs: an existing run folder needs --resume or --overwrite."""
    out = Path(cfg.output_dir)
    existing = [m for m in FINISHED_MARKERS if (out / m).exists()]
    if existing and not resume and not overwrite:
        raise ConfigError(
            f"`output_dir` {out} already holds a run ({', '.join(existing)}). "
            "Pass --resume to continue it, --overwrite to replace it, or set another output_dir."
        )
    if resume and (out / "eval.json").exists():
        raise ConfigError(
            f"{out} is a finished run (eval.json exists); there is nothing to resume. "
            "Pass --overwrite to train it again, or set another output_dir."
        )
    if overwrite and not resume:
        for name in (*FINISHED_MARKERS, "metrics.jsonl", "tb", "plots", "report.md"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    return out


def finetune(
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_steps: int | None = None,
    loss_fn: LossFn | None = None,
) -> dict[str, Any]:
    """Run the recipe; returns eval.json's content. `stop_after_steps` acts as a signal there
    (used by tests to interrupt a run at an exact step). `loss_fn` replaces the task loss in
    training only (evaluation keeps the task loss)."""
    import torch
    from accelerate import Accelerator

    from tailorml.runtime import seed_everything, set_threads

    # ---- everything that can fail on bad input happens before anything is written ----------
    resolve_base(cfg.model.base)
    views = cfg.head_views()  # head name -> single-task view ("" when there is one task)
    multi = cfg.multitask
    if multi and loss_fn is not None:
        raise ConfigError("A custom training loss is not supported for multi-task (`heads`) runs.")
    metric = _metric_for_best(cfg, views)
    all_splits: dict[str, Splits] = {}
    problems: list[str] = []
    for name, view in views.items():
        try:
            all_splits[name] = prepare_splits(view)
        except DataError as exc:
            problems += [f"heads.{name}: {p}" if multi else p for p in exc.problems]
    if problems:
        raise DataError(problems)
    out = prepare_run_dir(cfg, resume, overwrite)
    ckpt_dir = out / "checkpoints"
    resume_from = latest_checkpoint(ckpt_dir) if resume else None
    if resume and resume_from is None:
        console.print(f"[yellow]No checkpoint in {ckpt_dir}; starting from the beginning.[/]")

    use_cuda = torch.cuda.is_available()
    precision = cfg.train.precision
    mixed = "bf16" if (precision == "bf16" or (precision == "auto" and use_cuda)) else "no"
    acc = Accelerator(cpu=not use_cuda, mixed_precision=mixed)
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    threads = set_threads(cfg.train.threads, world) if not use_cuda else torch.get_num_threads()
    seed_everything(cfg.train.seed)

    specs = layout([(n, v.task.type, all_splits[n].labels) for n, v in views.items()])
    spec_of = {h.name: h for h in specs}
    weights = {n: (cfg.heads[n].loss_weight if cfg.heads else 1.0) for n in views}
    tokenizer = load_tokenizer(resolve_base(cfg.model.base))
    if multi:
        model = build_model(cfg.model, "classification", column_names(specs), tokenizer)
    else:
        model = build_model(cfg.model, cfg.task.type, all_splits[""].labels, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = {
        name: {
            split: encode(tokenizer, getattr(all_splits[name], split), view.data.max_length)
            for split in ("train", "eval", "test")
        }
        for name, view in views.items()
    }
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        summaries = {n: _print_data_summary(v, all_splits[n], enc[n], n) for n, v in views.items()}
        _atomic_json(out / "data_summary.json", {"heads": summaries} if multi else summaries[""])

    # ---- optimisation plan ----------------------------------------------------------------
    t = cfg.train
    steps_per_epoch = sum(math.ceil(len(e["train"]) / t.batch_size) for e in enc.values())
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, total_steps)
    model, optimizer = acc.prepare(model, optimizer)
    raw_model = acc.unwrap_model(model)
    if t.compile:
        model = torch.compile(model)
    eval_every = t.eval_every_steps or steps_per_epoch
    save_every = t.save_every_steps or eval_every

    state: dict[str, Any] = {
        "global_step": 0,
        "epoch": 0,
        "batch_in_epoch": 0,
        "samples_seen": 0,
        "best_metric": None,
        "best_step": None,
        "evals_without_improvement": 0,
        "total_steps": total_steps,
        "metric_for_best": metric,
    }
    if resume_from is not None:
        state.update(load_checkpoint(resume_from, raw_model, optimizer, scheduler, rank))
        if main:
            console.print(f"Resumed from {resume_from} (step {state['global_step']}).")
    logger = RunLogger(out, enabled=main, resume_step=state["global_step"] if resume_from else None)

    def evaluate_split(split: str) -> dict[str, Any]:
        # The unwrapped model: DDP would broadcast buffers on each forward, and ranks run
        # different numbers of eval batches, so a wrapped forward here would deadlock.
        per: dict[str, dict[str, Any]] = {}
        for h in specs:
            e = enc[h.name][split]
            logits, loss = _distributed_logits(
                raw_model, e, t.eval_batch_size, pad_id, acc, h.task, h.columns
            )
            per[h.name] = compute_metrics(h.task, logits, e.labels, h.labels)
            per[h.name]["loss"] = loss
        return _combine_heads(per) if multi else per[""]

    def save(tag_dir: Path) -> None:
        acc.wait_for_everyone()
        rngs = _gather_objects(rng_state(), world)
        if main:
            save_checkpoint(tag_dir, raw_model, optimizer, scheduler, dict(state), rngs)
            prune_checkpoints(ckpt_dir, t.keep_checkpoints)
        acc.wait_for_everyone()

    # ---- the loop --------------------------------------------------------------------------
    micro = t.batch_size // t.grad_accum_steps  # global micro-batch size
    lengths = {n: e["train"].lengths for n, e in enc.items()}
    stopped_by: str | None = None
    progress = TrainProgress(total_steps, enabled=main)
    loop_t0, side_seconds, samples_at_start = time.perf_counter(), 0.0, state["samples_seen"]
    progress.start(state["global_step"], state["samples_seen"])
    window_loss, window_n, window_t0 = 0.0, 0, time.perf_counter()
    model.train()
    with StopRequested() as stop:
        while state["global_step"] < total_steps and stopped_by is None:
            batches = plan_epoch(
                lengths, t.batch_size, t.seed, state["epoch"], bucket=t.bucket_by_length
            )
            while state["batch_in_epoch"] < len(batches):
                head_name, batch = batches[state["batch_in_epoch"]]
                head = spec_of[head_name]
                step_loss = _train_step(
                    model,
                    batch,
                    micro,
                    enc[head_name]["train"],
                    pad_id,
                    head,
                    acc,
                    rank,
                    world,
                    loss_fn,
                    weights[head_name],
                )
                if t.max_grad_norm is not None:
                    acc.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["global_step"] += 1
                state["batch_in_epoch"] += 1
                state["samples_seen"] += len(batch)
                step = state["global_step"]
                window_loss += step_loss * len(batch)
                window_n += len(batch)
                lr = float(scheduler.get_last_lr()[0])
                progress.update(step, step_loss, lr, state["samples_seen"])

                if step % t.log_every_steps == 0 or step == total_steps:
                    dt = time.perf_counter() - window_t0
                    logger.log(
                        step,
                        "train",
                        {
                            "loss": window_loss / max(window_n, 1),
                            "lr": lr,
                            "samples_per_s": window_n / max(dt, 1e-9),
                            "epoch": state["epoch"] + state["batch_in_epoch"] / len(batches),
                        },
                    )
                    window_loss, window_n, window_t0 = 0.0, 0, time.perf_counter()

                side_t0 = time.perf_counter()  # eval + checkpoint time is not training time
                do_eval = step % eval_every == 0 or step == total_steps
                if do_eval:
                    metrics = evaluate_split("eval")
                    scal = scalar_metrics(metrics)
                    logger.log(step, "eval", scal)
                    progress.note(
                        f"step {step}: eval {metric}={scal.get(metric, float('nan')):.4f}"
                    )
                    if is_better(_direction(metric), scal[metric], state["best_metric"]):
                        state.update(best_metric=scal[metric], best_step=step)
                        state["evals_without_improvement"] = 0
                        save(ckpt_dir / "best")
                    else:
                        state["evals_without_improvement"] += 1
                    patience = t.early_stopping_patience
                    if patience and state["evals_without_improvement"] >= patience:
                        stopped_by = "early stopping"
                if step % save_every == 0 and step != total_steps:
                    save(ckpt_dir / f"step-{step}")
                side_seconds += time.perf_counter() - side_t0
                signum = _agree_on_signal(stop.signum, acc)
                if stop_after_steps is not None and step >= stop_after_steps:
                    signum = int(signal.SIGINT)
                if signum is not None and step < total_steps:
                    save(ckpt_dir / f"step-{step}")
                    progress.stop()
                    logger.close()
                    if main:
                        console.print(
                            f"[yellow]Interrupted at step {step}; checkpoint saved. "
                            f"Continue with: tailor finetune CONFIG --resume[/]"
                        )
                    raise KeyboardInterrupt(signum)
                if step >= total_steps or stopped_by:
                    break
            else:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
    progress.stop()
    train_seconds = time.perf_counter() - loop_t0 - side_seconds

    # ---- best model, final evaluation, report ------------------------------------------------
    best_dir = ckpt_dir / "best"
    if best_dir.exists():
        from safetensors.torch import load_file

        raw_model.load_state_dict(load_file(str(best_dir / "model.safetensors")), strict=False)
    results: dict[str, Any] = {"eval": evaluate_split("eval"), "test": evaluate_split("test")}
    replica_diff = _replica_max_diff(raw_model, world)
    results["train"] = {
        "replicas_identical": replica_diff == 0.0,
        "max_replica_param_diff": replica_diff,
        "steps": state["global_step"],
        "best_step": state["best_step"],
        "metric_for_best": metric,
        "stopped_by": stopped_by or "max steps",
        "processes": world,
        "train_seconds": round(train_seconds, 3),
        "train_samples_per_s": round((state["samples_seen"] - samples_at_start) / train_seconds, 2),
        "threads_per_process": threads,
    }
    if main:
        for split in ("eval", "test"):
            logger.log(state["global_step"], f"final_{split}", scalar_metrics(results[split]))
        _save_model(out, raw_model, tokenizer, cfg, specs)
        _atomic_json(out / "eval.json", results)
        from tailorml.evaluate.report import write_multitask_report, write_report

        if multi:
            write_multitask_report(out, cfg, results, all_splits)
            for h in specs:
                _print_results(results, h.task, h.name)
        else:
            write_report(out, cfg, results, all_splits[""])
            _print_results(results, cfg.task.type)
    logger.close()
    acc.wait_for_everyone()
    acc.end_training()
    return results


def plan_epoch(
    lengths: dict[str, Any], batch_size: int, seed: int, epoch: int, bucket: bool = True
) -> list[tuple[str, Any]]:
    """(head name, example indices) per global batch of one epoch.

    Each head's examples are planned on their own (length-bucketed, seeded by (seed, epoch));
    with several heads the batches are interleaved in a seeded random order, so each epoch
    sees every example of every head once and the heads take turns in proportion to their
    data. With one head this is exactly `plan_batches`."""
    import numpy as np

    plans = {
        name: plan_batches(n_lengths, batch_size, seed + k, epoch, bucket=bucket)
        for k, (name, n_lengths) in enumerate(lengths.items())
    }
    tagged = [(name, b) for name, plan in plans.items() for b in plan]
    if len(plans) == 1:
        return tagged
    order = np.random.default_rng([seed, epoch, 7]).permutation(len(tagged))
    return [tagged[i] for i in order]


def _metric_for_best(cfg: RunConfig, views: dict[str, RunConfig]) -> str:
    """The eval metric that picks the best checkpoint, checked against what the run reports."""
    chosen = cfg.train.metric_for_best
    if not cfg.multitask:
        task = cfg.task.type
        if chosen and chosen not in SCALARS[task]:
            raise ConfigError(
                f"`train.metric_for_best` = {chosen!r} is not reported for {task}. "
                f"Choose one of {SCALARS[task]}."
            )
        return chosen or DEFAULT_METRIC[task]
    tasks = {n: v.task.type for n, v in views.items()}
    common = set.intersection(*(set(SCALARS[t]) for t in tasks.values())) - {"loss"}
    allowed = ["loss", *(f"mean_{m}" for m in sorted(common))]
    allowed += [f"{n}/{m}" for n, t in tasks.items() for m in SCALARS[t]]
    if chosen:
        if chosen not in allowed:
            raise ConfigError(
                f"`train.metric_for_best` = {chosen!r} is not reported for this multi-task run. "
                f"Choose one of {allowed}."
            )
        return chosen
    defaults = {DEFAULT_METRIC[t] for t in tasks.values()}
    return f"mean_{defaults.pop()}" if len(defaults) == 1 else "loss"


def _combine_heads(per: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Metrics of a multi-task split: each head's under `heads`, flat `head/metric` scalars,
    and `mean_<metric>` over the heads for metrics every head reports (`loss` = mean loss)."""
    out: dict[str, Any] = {"heads": per}
    scalars = {n: scalar_metrics(m) for n, m in per.items()}
    for n, sc in scalars.items():
        out.update({f"{n}/{k}": v for k, v in sc.items()})
    common = set.intersection(*(set(sc) for sc in scalars.values()))
    for k in sorted(common):
        vals = [sc[k] for sc in scalars.values()]
        out["loss" if k == "loss" else f"mean_{k}"] = sum(vals) / len(vals)
    return out


def _train_step(
    model: Any,
    batch: Any,
    micro: int,
    enc: Encoded,
    pad_id: int,
    head: HeadSpec,
    acc: Any,
    rank: int,
    world: int,
    loss_fn: LossFn | None = None,
    weight: float = 1.0,
) -> float:
    """Forward/backward over one global batch split into micro-batches; returns the mean loss.
    The loss sees only `head`'s logit columns (all of them for a single-task model)."""
    import torch

    from tailorml.evaluate.inference import task_loss

    chunks = [batch[i : i + micro] for i in range(0, len(batch), micro)]
    total = 0.0
    for j, chunk in enumerate(chunks):
        mine = shard(chunk, rank, world)
        # Normalise by the global batch so that DDP's mean over ranks gives the global mean.
        denom = len(batch) / world
        sync = j == len(chunks) - 1
        ctx = acc.no_sync(model) if (not sync and world > 1) else _null()
        with ctx:
            if len(mine) == 0:  # a rank with nothing in this chunk still joins the all-reduce
                loss = sum(p.sum() * 0.0 for p in model.parameters())
            else:
                inputs = collate(enc, mine, pad_id, head.task, head.size)
                labels = inputs.pop("labels").to(acc.device)
                inputs = {k: v.to(acc.device) for k, v in inputs.items()}
                with acc.autocast():
                    logits = model(**inputs).logits[:, head.columns]
                if loss_fn is None:
                    per_example = task_loss(head.task, logits, labels)
                else:
                    per_example = loss_fn(logits, labels, inputs, mine)
                loss = per_example.sum() * weight / denom
                total += float(per_example.detach().sum())
            acc.backward(loss)
    if world > 1:
        t = torch.tensor([total], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        total = float(t.item())
    return total / len(batch)


def _direction(metric: str) -> str:
    """The plain metric name that says whether lower or higher is better."""
    return metric.rsplit("/", 1)[-1].removeprefix("mean_")


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _gather_objects(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _replica_max_diff(model: Any, world: int) -> float:
    """Largest difference of any parameter between this process and rank 0 (0.0 = in sync).

    Proves that gradients really synchronised: every rank must end with rank 0's weights.
    """
    if world == 1:
        return 0.0
    import torch
    import torch.distributed as dist

    worst = torch.zeros(1, dtype=torch.float64)
    for p in model.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (p.detach() - ref).abs().max().double().reshape(1))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst.item())


def _agree_on_signal(signum: int | None, acc: Any) -> int | None:
    """All ranks stop at the same step if any of them got a signal."""
    if acc.num_processes == 1:
        return signum
    import torch

    t = torch.tensor([signum or 0], dtype=torch.long)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item()) or None


def _distributed_logits(
    model: Any,
    enc: Encoded,
    batch_size: int,
    pad_id: int,
    acc: Any,
    task: str,
    columns: slice | None = None,
) -> tuple[Any, float]:
    """Every rank scores its share of the batches; all ranks get all logits (same order),
    restricted to `columns` (one head of a multi-task model)."""
    import numpy as np
    import torch

    from tailorml.data.batching import labels_tensor
    from tailorml.evaluate.inference import ordered, predict_logits, task_loss

    logits, rows = predict_logits(
        model,
        enc,
        batch_size,
        pad_id,
        acc.device,
        acc.autocast,
        acc.process_index,
        acc.num_processes,
    )
    parts = _gather_objects((logits, rows), acc.num_processes)
    all_logits = np.concatenate([p[0] for p in parts])
    all_rows = [r for p in parts for r in p[1]]
    full = ordered(all_logits, all_rows, len(enc))
    if columns is not None:
        full = np.ascontiguousarray(full[:, columns])
    y = labels_tensor(enc.labels, task, full.shape[1])
    loss = float(task_loss(task, torch.from_numpy(full), y).mean())
    return full, loss


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _save_model(
    out: Path, model: Any, tokenizer: Any, cfg: RunConfig, specs: list[HeadSpec]
) -> None:
    """RUN_DIR/model: Hugging Face layout + task.json; written to a temp folder, then renamed."""
    final, tmp = out / "model", out / "model.tmp"
    for p in (tmp,):
        if p.exists():
            shutil.rmtree(p)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if cfg.heads is None:
        info: dict[str, Any] = {
            "task": cfg.task.type,
            "labels": specs[0].labels,
            "max_length": cfg.data.max_length,
            "text_column": cfg.data.text_column,
            "text_pair_column": cfg.data.text_pair_column,
            "label_column": cfg.data.label_column,
            "label_separator": cfg.data.label_separator,
            "base": cfg.model.base,
            "multilabel_threshold": 0.5,
        }
    else:
        heads = []
        for h in specs:
            d = cfg.heads[h.name].data
            heads.append(
                {
                    **h.to_json(),
                    "text_column": d.text_column,
                    "text_pair_column": d.text_pair_column,
                    "label_column": d.label_column,
                    "label_separator": d.label_separator,
                    "max_length": d.max_length,
                }
            )
        first = cfg.heads[specs[0].name].data
        info = {
            "task": MULTITASK,
            "heads": heads,
            "labels": column_names(specs),
            "max_length": max(h["max_length"] for h in heads),
            "text_column": first.text_column,
            "text_pair_column": first.text_pair_column,
            "base": cfg.model.base,
        }
    write_task_json(tmp, info)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _print_data_summary(
    cfg: RunConfig, splits: Splits, enc: dict[str, Encoded], head: str = ""
) -> dict[str, Any]:
    from rich.table import Table

    summary = splits.summary()
    for name, e in enc.items():
        summary["splits"][name]["truncated"] = e.n_truncated
        summary["splits"][name]["mean_tokens"] = float(e.lengths.mean()) if len(e) else 0.0
    summary["class_balance"] = balance_table(splits, cfg.task.type)
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
    if bal:
        shown = ", ".join(f"{k}: {v.get('train', 0)}" for k, v in list(bal.items())[:12])
        more = f", ... ({len(bal)} labels)" if len(bal) > 12 else ""
        console.print(f"  class balance (train): {shown}{more}")
    return summary


def _print_results(results: dict[str, Any], task: str, head: str = "") -> None:
    from rich.table import Table

    keys = [k for k in SCALARS[task]]
    table = Table(title=f"Results: head {head}" if head else "Results", show_edge=False)
    table.add_column("split")
    for k in keys:
        table.add_column(k, justify="right")
    for split in ("eval", "test"):
        m = results[split]["heads"][head] if head else results[split]
        table.add_row(split, *(f"{m[k]:.4f}" for k in keys))
    console.print(table)
