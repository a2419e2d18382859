"""The training loop every training recipe shares: planned batches, gradient accumulation across
processes, clipping, logging, periodic evaluation, the best checkpoint, early stopping, and a
checkpoint-then-exit on SIGINT/SIGTERM. What a step computes comes from the recipe (`step_loss`),
and so does what an evaluation measures (`evaluate`).

Runs the same on one process and on `torchrun` (CPU/gloo or GPU/nccl): the global batch
(`train.batch_size`) is split evenly across processes and the loss is normalised by the global
batch, so N processes compute the same update as one. The state saved in a checkpoint (loop
position included) makes `--resume` continue exactly.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailorml.config.schema import TrainConfig
from tailorml.data.batching import plan_epoch, shard
from tailorml.evaluate.metrics import is_better, scalar_metrics
from tailorml.track.logger import RunLogger
from tailorml.train.checkpoint import (
    load_latest_intact,
    load_weights,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
)
from tailorml.train.distributed import agree_on_signal, all_reduce_sum, gather_objects, no_sync
from tailorml.train.progress import TrainProgress, console
from tailorml.train.signals import StopRequested

# (model, head name, this rank's example indices of the head's train set) -> per-example loss
StepLoss = Callable[[Any, str, np.ndarray], Any]


@dataclass
class LoopResult:
    state: dict[str, Any]  # trainer_state.json of the last step
    stopped_by: str  # "max steps", "early stopping" or "pruned" (on_eval asked to stop)
    train_seconds: float  # loop time without evaluation and checkpoints
    samples: int  # examples trained on in this process's run (not before a resume)


def _or_inf(x: float | None) -> float:
    return float("inf") if x is None else x


def initial_state(total_steps: int, metric: str) -> dict[str, Any]:
    return {
        "global_step": 0,
        "epoch": 0,
        "batch_in_epoch": 0,
        "samples_seen": 0,
        "best_metric": None,
        "best_step": None,
        "evals_without_improvement": 0,  # neither a better metric nor a lower eval loss
        "best_loss": None,
        "best_metric_loss": None,  # the eval loss at the best checkpoint (breaks metric ties)
        "total_steps": total_steps,
        "metric_for_best": metric,
    }


def resume_state(
    state: dict[str, Any],
    ckpt_dir: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    process_index: int,
    main: bool,
) -> bool:
    """Load the latest intact checkpoint of `ckpt_dir` into the model, optimizer, scheduler and
    `state` (the loop's counters), saying on the main process which damaged ones were skipped.
    True when the run resumed; False when no checkpoint could be loaded."""
    resumed = load_latest_intact(ckpt_dir, model, optimizer, scheduler, process_index)
    if resumed is None:
        return False
    folder, saved, damaged = resumed
    state.update(saved)
    if main:
        for bad, why in damaged:
            console.print(f"[yellow]Checkpoint {bad} is damaged ({why}); skipped it.[/]")
        console.print(f"Resumed from {folder} (step {state['global_step']}).")
    return True


@dataclass
class Started:
    """What `start_training` prepared for `train_loop`."""

    model: Any  # the module the loop steps (wrapped by accelerate, compiled if asked)
    raw_model: Any  # the unwrapped module: what checkpoints save and load
    optimizer: Any
    scheduler: Any
    state: dict[str, Any]  # the loop's counters, a checkpoint's if the run resumed
    logger: RunLogger


def start_training(
    module: Any,
    t: TrainConfig,
    total_steps: int,
    metric: str,
    acc: Any,
    out: Path,
    ckpt_dir: Path,
    has_checkpoint: bool,
    main: bool,
    resume_into: Any = None,
) -> Started:
    """The set-up every recipe shares before `train_loop`: optimizer and schedule over
    `module`'s parameters, accelerate's prepare, torch.compile when `train.compile`, the loop's
    counters, the latest intact checkpoint loaded (into `resume_into`, default the unwrapped
    module), and the run's metric logger."""
    import torch

    from tailorml.train.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(module, t)
    scheduler = build_scheduler(optimizer, t, total_steps)
    model, optimizer = acc.prepare(module, optimizer)
    raw_model = acc.unwrap_model(model)
    if t.compile:
        model = torch.compile(model)
    state = initial_state(total_steps, metric)
    target = raw_model if resume_into is None else resume_into
    resumed = has_checkpoint and resume_state(
        state, ckpt_dir, target, optimizer, scheduler, acc.process_index, main
    )
    logger = RunLogger(out, enabled=main, resume_step=state["global_step"] if resumed else None)
    return Started(model, raw_model, optimizer, scheduler, state, logger)


def train_loop(
    *,
    model: Any,
    raw_model: Any,
    optimizer: Any,
    scheduler: Any,
    acc: Any,
    t: TrainConfig,
    lengths: dict[str, np.ndarray],
    step_loss: StepLoss,
    evaluate: Callable[[], dict[str, Any]],
    weights: dict[str, float],
    state: dict[str, Any],
    ckpt_dir: Path,
    logger: RunLogger,
    stop_after_steps: int | None = None,
    resume_hint: str = "tailor finetune CONFIG --resume",
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
    log_extra: Callable[[dict[str, float]], dict[str, float]] | None = None,
) -> LoopResult:
    """Train until `state["total_steps"]` (or early stopping). `lengths`: per head, the token
    length of every training example (planning); `weights`: per head, its loss weight.
    `on_eval(step, eval scalars + "epoch": epochs done, a float)` runs after each evaluation;
    True stops the run there (a hyperparameter search prunes a trial that way: stopped_by
    "pruned"). `log_extra(train scalars)` adds scalars to each train log line (pretraining:
    perplexity, tokens/s)."""
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    total_steps, metric = state["total_steps"], state["metric_for_best"]
    steps_per_epoch = sum(-(-len(n) // t.batch_size) for n in lengths.values())
    eval_every = t.eval_every_steps or steps_per_epoch
    save_every = t.save_every_steps or eval_every
    micro = t.batch_size // t.grad_accum_steps  # global micro-batch size

    def save(tag_dir: Path) -> None:
        acc.wait_for_everyone()
        rngs = gather_objects(rng_state(), world)
        if main:
            save_checkpoint(tag_dir, raw_model, optimizer, scheduler, dict(state), rngs)
            prune_checkpoints(ckpt_dir, t.keep_checkpoints)
        acc.wait_for_everyone()

    def train_step(head_name: str, batch: np.ndarray) -> float:
        """Forward/backward over one global batch in micro-batches; returns its mean loss."""
        chunks = [batch[i : i + micro] for i in range(0, len(batch), micro)]
        total = 0.0
        for j, chunk in enumerate(chunks):
            mine = shard(chunk, rank, world)
            # Normalise by the global batch so that DDP's mean over ranks gives the global mean.
            denom = len(batch) / world
            with no_sync(acc, model, skip=j < len(chunks) - 1 and world > 1):
                if len(mine) == 0:  # a rank with nothing in this chunk still joins the all-reduce
                    loss = sum(p.sum() * 0.0 for p in model.parameters())
                else:
                    per_example = step_loss(model, head_name, mine)  # (len(mine),)
                    loss = per_example.sum() * weights[head_name] / denom
                    total += float(per_example.detach().sum())
                acc.backward(loss)
        return all_reduce_sum(total, world) / len(batch)

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
                step_loss_value = train_step(head_name, batch)
                if t.max_grad_norm is not None:
                    acc.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["global_step"] += 1
                state["batch_in_epoch"] += 1
                state["samples_seen"] += len(batch)
                step = state["global_step"]
                window_loss += step_loss_value * len(batch)
                window_n += len(batch)
                lr = float(max(scheduler.get_last_lr()))  # the top rate under layer-wise decay
                progress.update(step, step_loss_value, lr, state["samples_seen"])

                if step % t.log_every_steps == 0 or step == total_steps:
                    dt = time.perf_counter() - window_t0
                    row = {
                        "loss": window_loss / max(window_n, 1),
                        "lr": lr,
                        "samples_per_s": window_n / max(dt, 1e-9),
                        "epoch": state["epoch"] + state["batch_in_epoch"] / len(batches),
                    }
                    logger.log(step, "train", row | (log_extra(row) if log_extra else {}))
                    window_loss, window_n, window_t0 = 0.0, 0, time.perf_counter()

                side_t0 = time.perf_counter()  # eval + checkpoint time is not training time
                if step % eval_every == 0 or step == total_steps:
                    scal = scalar_metrics(evaluate())
                    logger.log(step, "eval", scal)
                    progress.note(
                        f"step {step}: eval {metric}={scal.get(metric, float('nan')):.4f}"
                    )
                    loss = scal.get("loss")
                    improved = is_better(metric, scal[metric], state["best_metric"])
                    # A tie on the metric (frequent on a small eval split: one row of 30 is 3.3
                    # points) goes to the lower eval loss, not to the earlier checkpoint.
                    tie_won = (
                        scal[metric] == state["best_metric"]
                        and loss is not None
                        and loss < _or_inf(state.get("best_metric_loss"))
                    )
                    if improved or tie_won:
                        state.update(best_metric=scal[metric], best_step=step)
                        state["best_metric_loss"] = loss
                        save(ckpt_dir / "best")
                    # Still learning: an eval loss 1% (`early_stopping_loss_drop`) under its
                    # lowest also keeps the run going. On a small eval split the metric wobbles
                    # while the loss falls (77 rows of 77 intents stopped a run at eval loss 2.07,
                    # falling 5% an epoch). It moves the stop, never the choice of checkpoint.
                    drop = t.early_stopping_loss_drop
                    if (
                        loss is not None
                        and drop is not None
                        and (
                            state.get("best_loss") is None or loss < (1 - drop) * state["best_loss"]
                        )
                    ):
                        state["best_loss"] = loss
                        improved = True
                    state["evals_without_improvement"] = (
                        0 if improved else state["evals_without_improvement"] + 1
                    )
                    patience = t.early_stopping_patience
                    cooling = state.get("cooldown_start") is not None
                    if patience and not cooling and state["evals_without_improvement"] >= patience:
                        stopped_by = "early stopping"
                    if on_eval is not None and on_eval(
                        step, scal | {"epoch": step / steps_per_epoch}
                    ):
                        stopped_by = "pruned"
                    if stopped_by == "early stopping" and t.cooldown:
                        total_steps = start_cooldown(
                            raw_model,
                            optimizer,
                            scheduler,
                            state,
                            ckpt_dir,
                            (patience or 1) * eval_every,
                        )
                        progress.extend(total_steps)
                        progress.note(
                            f"step {step}: back to the best checkpoint (step "
                            f"{state['best_step']}); cooling the learning rate down to 0 "
                            f"over {total_steps - step} steps"
                        )
                        stopped_by = None
                if step % save_every == 0 and step != total_steps:
                    save(ckpt_dir / f"step-{step}")
                side_seconds += time.perf_counter() - side_t0
                signum = agree_on_signal(stop.signum, world)
                if stop_after_steps is not None and step >= stop_after_steps:
                    signum = int(signal.SIGINT)
                if signum is not None and step < total_steps:
                    save(ckpt_dir / f"step-{step}")
                    progress.stop()
                    logger.close()
                    if main:
                        console.print(
                            f"[yellow]Interrupted at step {step}; checkpoint saved. "
                            f"Continue with: {resume_hint}[/]"
                        )
                    raise KeyboardInterrupt(signum)
                if step >= total_steps or stopped_by:
                    break
            else:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
    progress.stop()
    train_seconds = time.perf_counter() - loop_t0 - side_seconds
    if stopped_by is None and state.get("cooldown_start") is not None:
        stopped_by = "early stopping, then a cool-down"
    return LoopResult(
        state, stopped_by or "max steps", train_seconds, state["samples_seen"] - samples_at_start
    )


def start_cooldown(
    raw_model: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    ckpt_dir: Path,
    steps: int,
) -> int:
    """Early stopping fired: put the best checkpoint's weights and optimizer state back, and
    make the schedule fall linearly from the learning rate of the best step to 0 over `steps`
    steps from now (the step count goes on; the data order too). Returns the new last step.
    The schedule's state and `state` keep the cool-down, so a resumed run continues it."""
    import torch

    best = ckpt_dir / "best"
    load_weights(best, raw_model)
    optimizer.load_state_dict(torch.load(best / "optimizer.pt", weights_only=True))
    step = state["global_step"]
    # LambdaLR holds one schedule object per parameter group (usually the same one, repeated)
    for lam in {id(lam): lam for lam in scheduler.lr_lambdas}.values():
        lam.cool_down(step, steps, lam(state["best_step"]))
    for group, base, lam in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * lam(step)
    state.update(
        cooldown_start=step,
        cooldown_steps=steps,
        best_before_cooldown=state["best_metric"],
        total_steps=step + steps,
        evals_without_improvement=0,
    )
    return int(state["total_steps"])


def load_best(raw_model: Any, ckpt_dir: Path) -> None:
    """Put the best checkpoint's weights back into the model (when one was saved)."""
    best = ckpt_dir / "best"
    if (best / "trainer_state.json").exists():
        load_weights(best, raw_model)


class EvalMemo:
    """The loop's `evaluate`, remembering its last result and the step it scored. After
    `load_best`, `final()` is that result when the best step is the one it scored (the same
    weights, so the same figures: the usual case of one evaluation at the end), else a fresh
    evaluation of the best model. Saves one pass over the eval split per run."""

    def __init__(self, evaluate: Callable[[], dict[str, Any]], state: dict[str, Any]):
        self.evaluate = evaluate
        self.state = state
        self.step: int | None = None
        self.result: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        self.result = self.evaluate()
        self.step = self.state["global_step"]
        return self.result

    def final(self) -> dict[str, Any]:
        if self.result is not None and self.step == self.state["best_step"]:
            return self.result
        return self.evaluate()
