"""Train an image classifier: the image-classification workflow in one readable file.

    check config and data (images decoded once into uint8 arrays) -> build the network
    (tailorml/models/images.py) -> train (tailorml.train.loop, batches augmented on the fly)
    -> best checkpoint -> eval.json on eval and test -> model folder -> report.md

The same loop, checkpoints (exact resume), run folder and report as text classification; runs
the same on one process and on `torchrun --nproc_per_node=N` (each rank takes its slice of every
global batch; evaluation is split over the ranks and gathered). bf16 autocast on CUDA only:
on a CPU the convolutions run in fp32 (channels-last).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tailorml import env
from tailorml.config.schema import RunConfig
from tailorml.data.image_splits import ImageSplits, prepare_image_splits
from tailorml.data.images import augment, channel_stats, to_float
from tailorml.files import atomic_json, atomic_write_text
from tailorml.models import build_model
from tailorml.tasks.base import IMAGE_CLASSIFIER
from tailorml.tasks.heads import HeadSpec, choose_metric, config_heads, task_json
from tailorml.tasks.images import check_image_config
from tailorml.track.logger import RunLogger
from tailorml.train import auto
from tailorml.train.distributed import gather_objects, replica_max_diff, start_processes
from tailorml.train.loop import EvalMemo, load_best, start_training, train_loop
from tailorml.train.progress import console
from tailorml.train.run_folder import prepare_run_dir, record_plan, resume_point
from tailorml.train.summary import model_size, peak_memory, print_results

DEFAULT_LR = 2e-3  # a usual AdamW rate for a small network trained from scratch (not tuned)


def batch_logits(
    model: Any, x: Any, mean: list[float], std: list[float], batch: int, device: Any,
    channels_last: bool, autocast: Callable[[], Any] | None = None,
) -> np.ndarray:  # fmt: skip
    """Logits (n, classes) of uint8 images `x` (n, h, w, c) as float32, in eval mode (the
    model's mode is restored after)."""
    import contextlib

    import torch

    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            inputs = to_float(x[i : i + batch], mean, std, channels_last).to(device)
            with autocast() if autocast else contextlib.nullcontext():
                out.append(model(inputs).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def train_images(
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_steps: int | None = None,
    start_if_nothing: bool = False,
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
) -> dict[str, Any]:
    """Run the recipe; returns eval.json's content (see `recipes.finetune.finetune`)."""
    env.setup()
    import torch
    import torch.nn.functional as F

    # ---- everything that can fail on bad input happens before anything is written ----------
    head0 = check_image_config(cfg)
    metric = choose_metric(cfg.train.metric_for_best, config_heads(cfg))
    task = head0.kind
    splits = prepare_image_splits(cfg, task)
    head = HeadSpec("", task.name, splits.labels, 0, len(splits.labels))
    h, w, channels = splits.shape
    chosen: dict[str, Any] = {}
    t = cfg.train
    if t.lr is None:
        t = t.model_copy(update={"lr": DEFAULT_LR})
        chosen["train.lr"] = {"value": DEFAULT_LR, "why": "a network trained from scratch"}
    if t.precision != "fp32" and not torch.cuda.is_available():
        chosen["train.precision"] = {"value": "fp32", "why": "image runs use bf16 on CUDA only"}
        t = t.model_copy(update={"precision": "fp32"})
    procs = start_processes(t)
    acc, world, main = procs.acc, procs.world, procs.main
    if t.precision == "auto":
        t = t.model_copy(update={"precision": procs.precision})
        chosen["train.precision"] = {"value": procs.precision, "why": procs.precision_why}

    model = build_model(cfg.model, [head], channels)
    img = cfg.images
    model.tta_flip = img.tta_flip
    fmt = torch.channels_last if img.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    size = model_size(model) if main else {}
    out = prepare_run_dir(Path(cfg.output_dir), resume, overwrite)
    ckpt_dir, has_checkpoint = resume_point(out, resume, start_if_nothing)

    # ---- data: uint8 tensors, normalised with the training set's statistics ------------------
    mean, std = channel_stats(splits.train.x)
    x = {s: torch.from_numpy(getattr(splits, s).x) for s in ("train", "eval", "test")}
    y_train = torch.tensor(splits.ys["train"], dtype=torch.long)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        summary = splits.summary(task)
        atomic_json(out / "data_summary.json", summary)
        for s, v in summary["splits"].items():
            console.print(
                f"  {s}: {v['rows']} images ({v['bad_rows_skipped']} skipped) of {w}x{h}x"
                f"{channels} from {v['source']}",
                highlight=False,
            )

    # ---- optimisation plan ------------------------------------------------------------------
    steps_per_epoch = math.ceil(len(splits.train) / t.batch_size)
    t, more = auto.resolve(t, steps_per_epoch, None)
    chosen.update({k: v for k, v in more.items() if k != "train.lr"})
    cfg = cfg.model_copy(update={"train": t})
    if main:
        record_plan(out, cfg, chosen)
    total_steps = t.max_steps or max(1, math.ceil((t.epochs or 1.0) * steps_per_epoch))
    run = start_training(model, t, total_steps, metric, acc, out, ckpt_dir, has_checkpoint, main)
    model, raw_model, optimizer, scheduler = run.model, run.raw_model, run.optimizer, run.scheduler
    state, logger = run.state, run.logger
    rank = acc.process_index

    def split_logits(split: str) -> np.ndarray:
        """Every rank scores every world-th image; all ranks get all logits in order."""
        xs = x[split]
        mine = np.arange(rank, len(xs), world)
        logits = batch_logits(
            raw_model, xs[mine], mean, std, t.eval_batch_size, acc.device, img.channels_last,
            acc.autocast,
        )  # fmt: skip
        parts = gather_objects((mine, logits), world)
        full = np.zeros((len(xs), head.size), dtype=np.float32)
        for idx, part in parts:
            if len(idx):
                full[idx] = part
        return full

    def evaluate_split(split: str, logits: np.ndarray | None = None) -> dict[str, Any]:
        logits = split_logits(split) if logits is None else logits
        ys = splits.ys[split]
        loss = float(task.loss(torch.from_numpy(logits), torch.tensor(ys)).mean())
        return {**task.compute_metrics(logits, ys, head.labels), "loss": loss}

    def step_loss(net: Any, head_name: str, idx: Any) -> Any:
        """Per-example loss of one micro-batch, its images augmented here."""
        ix = torch.as_tensor(idx, dtype=torch.long)
        xb = augment(x["train"][ix], img.crop_padding, img.flip, erase=img.erase)
        inputs = to_float(xb, mean, std, img.channels_last).to(acc.device)
        targets = y_train[ix].to(acc.device)
        with acc.autocast():
            logits = net(inputs)
        return F.cross_entropy(
            logits.float(), targets, reduction="none", label_smoothing=img.label_smoothing
        )

    eval_memo = EvalMemo(lambda: evaluate_split("eval"), state)
    loop = train_loop(
        model=model,
        raw_model=raw_model,
        optimizer=optimizer,
        scheduler=scheduler,
        acc=acc,
        t=t,
        lengths={"": np.ones(len(splits.train), dtype=np.int64)},
        step_loss=step_loss,
        evaluate=eval_memo,
        weights={"": 1.0},
        state=state,
        ckpt_dir=ckpt_dir,
        logger=logger,
        stop_after_steps=stop_after_steps,
        on_eval=on_eval,
    )

    # ---- best model, final evaluation, report ------------------------------------------------
    load_best(raw_model, ckpt_dir)
    test_logits = split_logits("test")
    results: dict[str, Any] = {
        "eval": eval_memo.final(),
        "test": evaluate_split("test", test_logits),
    }
    replica_diff = replica_max_diff(raw_model, world)
    results["train"] = {
        "replicas_identical": replica_diff == 0.0,
        "max_replica_param_diff": replica_diff,
        "steps": state["global_step"],
        "best_step": state["best_step"],
        "metric_for_best": metric,
        "stopped_by": loop.stopped_by,
        "processes": world,
        "train_seconds": round(loop.train_seconds, 3),
        "train_samples_per_s": round(loop.samples / max(loop.train_seconds, 1e-9), 2),
        "threads_per_process": procs.threads,
        **size,
        **peak_memory(torch.cuda.is_available()),
    }
    if main:
        _finish(out, cfg, raw_model, head, splits, results, test_logits, (mean, std), logger, state)
    logger.close()
    acc.wait_for_everyone()
    acc.end_training()
    return results


def _finish(
    out: Path, cfg: RunConfig, model: Any, head: HeadSpec, splits: ImageSplits,
    results: dict[str, Any], test_logits: np.ndarray, norm: tuple[list[float], list[float]],
    logger: RunLogger, state: dict[str, Any],
) -> None:  # fmt: skip
    """The main process's writes: final metrics, the model folder, eval.json, report.md."""
    from tailorml.evaluate.metrics import scalar_metrics
    from tailorml.train.image_report import image_section
    from tailorml.train.report import write_report

    for split in ("eval", "test"):
        logger.log(state["global_step"], f"final_{split}", scalar_metrics(results[split]))
    h, w, c = splits.shape
    info = task_json([head], cfg.model.base, image_fields((h, w, c), norm, cfg.images))
    save_image_folder(out, model, info)
    atomic_json(out / "eval.json", results)
    report = write_report(out, cfg.name, cfg.model.base, [head], results, {"": splits})
    lines = image_section(out, results["test"], splits.test.x, splits.ys["test"], test_logits)
    atomic_write_text(report, report.read_text(encoding="utf-8") + "\n".join(lines) + "\n")
    print_results(results, head)


def image_fields(
    shape: tuple[int, int, int], norm: tuple[list[float], list[float]], img: Any
) -> dict[str, Any]:
    """task.json fields of an image model: family, input shape, normalisation."""
    h, w, c = shape
    return {
        "family": IMAGE_CLASSIFIER,
        "image": {"height": h, "width": w, "channels": c},
        "normalize": {"mean": norm[0], "std": norm[1]},
        "channels_last": bool(img.channels_last),
        "runtime": "torch",
    }


def save_image_folder(out: Path, model: Any, info: dict[str, Any]) -> Path:
    """RUN_DIR/model: model.safetensors, arch.json and task.json, written to a temp folder and
    renamed into place."""
    import shutil

    from tailorml.tasks.folder import write_task_json

    final, tmp = out / "model", out / "model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    write_task_json(tmp, info)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final
