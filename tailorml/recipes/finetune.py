"""Fine-tune a pretrained encoder on labeled data: the workflow in one readable file.

    check config and data -> build the model for its heads (LoRA adapters when `model.lora` is
    set) -> train (tailorml.train.loop)
    -> best checkpoint -> eval.json on eval and test -> model folder -> report.md with plots

A single-task config is one head (named ""); a multi-task config (`heads:`) has one head per
task, each with its own data, on one shared encoder. Runs the same on one process and on
`torchrun --nproc_per_node=N` (see tailorml/train/loop.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tailorml import env
from tailorml.config.schema import RunConfig
from tailorml.data.batching import collate, encode
from tailorml.data.prepare import Splits, prepare_splits
from tailorml.errors import ConfigError, DataError
from tailorml.files import atomic_json
from tailorml.models import build_model, model_family
from tailorml.models.base import base_model_type, load_tokenizer, resolve_base
from tailorml.models.lora import task_fields as lora_task_fields
from tailorml.models.pooling import POOLING_KEY
from tailorml.tasks import get_task
from tailorml.tasks.heads import (
    HeadSpec,
    choose_metric,
    combine_metrics,
    config_heads,
    data_heads,
    is_single,
    nest_heads,
    task_json,
)
from tailorml.train import auto, contrastive, frozen, probe
from tailorml.train.distributed import distributed_logits, replica_max_diff, start_processes
from tailorml.train.loop import EvalMemo, LoopResult, load_best, start_training, train_loop
from tailorml.train.progress import console
from tailorml.train.run_folder import prepare_run_dir, record_plan, resume_point, save_model_folder
from tailorml.train.summary import data_summary, model_size, peak_memory, print_results

# What train/auto.py chooses for the fine-tuning loop, which the contrastive stage replaces
FINE_TUNING_KEYS = {
    f"train.{k}" for k in ("lr", "epochs", "max_steps", "early_stopping_patience", "warmup_ratio")
} | {"train.eval_every_steps"}

# A training loss in place of the task's: (logits, targets, inputs, example indices into the
# train split) -> per-example loss (batch,). Distillation (`distill.teacher`) is one.
LossFn = Callable[[Any, Any, dict[str, Any], Any], Any]


def read_heads(cfg: RunConfig) -> tuple[list[HeadSpec], dict[str, Splits]]:
    """Every head's checked splits, and the heads laid out over the model's columns (labels
    from each head's training data). DataError lists every problem, each naming its head."""
    views = cfg.head_views()  # head name -> one-head view of the config ("" when single-task)
    splits: dict[str, Splits] = {}
    problems: list[str] = []
    for name, view in views.items():
        key = f"heads.{name}.task.type" if name else "task.type"
        try:
            splits[name] = prepare_splits(view, get_task(view.task.type, key))
        except (DataError, ConfigError) as exc:
            problems += [f"heads.{name}: {p}" if name else p for p in exc.problems]
    if problems:
        raise DataError(problems)
    return data_heads(cfg, {n: s.labels for n, s in splits.items()}), splits


def distill_loss(cfg: RunConfig, heads: list[HeadSpec]) -> LossFn | None:
    """The distillation loss when `distill.teacher` is set: the teacher's soft labels on the
    same inputs, plus the gold labels. The teacher must answer the same classes."""
    d = cfg.distill
    if d.teacher is None:
        return None
    from tailorml.compress.distill import DistillLoss
    from tailorml.models.classifier import load_classifier
    from tailorml.tasks.folder import read_model_info, resolve_model_dir

    folder = resolve_model_dir(d.teacher)
    teacher = read_model_info(folder)
    h = heads[0]
    if not is_single(heads) or h.kind.problem_type != "single_label_classification":
        raise ConfigError(
            "`distill.teacher` is set, but distillation supports one single-label "
            f"classification head, not {', '.join(f'{x.name or x.task}' for x in heads)}. "
            "Remove `distill`."
        )
    if teacher.labels != h.labels:
        raise ConfigError(
            f"`distill.teacher` {folder} answers {teacher.labels}, but this run's labels are "
            f"{h.labels}. Distil from a teacher trained on the same classes."
        )
    return DistillLoss(
        load_classifier(folder), d.temperature, d.alpha, d.hidden_weight, d.attention_weight
    )


def finetune(
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_steps: int | None = None,
    start_if_nothing: bool = False,
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
) -> dict[str, Any]:
    """Run the recipe; returns eval.json's content. `resume` continues from the latest
    checkpoint (an error when there is none, unless `start_if_nothing`: then the run starts,
    which suits a scheduler that reruns the same command). `stop_after_steps` acts as a signal
    there (used by tests to interrupt a run at an exact step). `on_eval(step, eval scalars and
    "epoch")` runs after every evaluation and may stop the run (`tailor tune` prunes with it)."""
    env.setup()
    import torch

    # ---- everything that can fail on bad input happens before anything is written ----------
    base_path = resolve_base(cfg.model.base)  # None for the random `tiny` model
    metric = choose_metric(cfg.train.metric_for_best, config_heads(cfg))
    heads, splits = read_heads(cfg)
    model_family(heads)
    loss_fn = distill_loss(cfg, heads)  # training only; evaluation keeps the task's loss
    pretrained = base_path is not None
    head_init, why = probe.resolve_head_init(
        cfg.model.head_init,
        pretrained=pretrained,
        lora=cfg.model.lora is not None,
        distill=loss_fn is not None,
    )

    procs = start_processes(cfg.train)
    acc, world, main = procs.acc, procs.world, procs.main
    use_stage, stage_why = contrastive.resolve(
        cfg.train.contrastive,
        pretrained=pretrained,
        lora=cfg.model.lora is not None,
        distill=loss_fn is not None,
        model_type=base_model_type(base_path),
        heads=heads,
        train_labels={h.name: splits[h.name].train.labels for h in heads},
        processes=world,
        pooling=cfg.model.pooling,
        set_keys=tuple(
            f"train.{k}" for k in ("lr", "epochs", "max_steps") if getattr(cfg.train, k) is not None
        ),
    )
    if use_stage:  # it trains the averaged token states, and fits the output layer itself
        head_init, why = "probe", "fitted after the contrastive stage (train/contrastive.py)"
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pooling": "mean"})})

    # ---- model (LoRA: its layers checked against `model.lora`), then the run folder ------------
    tokenizer = load_tokenizer(base_path)
    model = build_model(cfg.model, heads, tokenizer)
    if loss_fn is not None and hasattr(loss_fn, "attach"):
        loss_fn.attach(model)  # intermediate-layer distillation hooks the student's layers
    if head_init == "probe":
        probe.output_layer(model)  # a model the probe cannot fit fails before the run folder
    use_frozen, frozen_why = frozen.resolve(
        False if use_stage and cfg.train.frozen_candidate == "auto" else cfg.train.frozen_candidate,
        pretrained=pretrained,
        lora=cfg.model.lora is not None,
        distill=loss_fn is not None,
        model_type=getattr(getattr(model, "config", None), "model_type", None),
        has_output_layer=isinstance(getattr(model, "classifier", None), torch.nn.Linear),
    )
    size = model_size(model) if main else {}
    out = prepare_run_dir(Path(cfg.output_dir), resume, overwrite)
    ckpt_dir, has_checkpoint = resume_point(out, resume, start_if_nothing)

    # ---- encoded data -------------------------------------------------------------------------
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    enc = {
        h.name: {
            split: encode(tokenizer, getattr(splits[h.name], split), h.data["max_length"])
            for split in ("train", "eval", "test")
        }
        for h in heads
    }
    if main:
        out.mkdir(parents=True, exist_ok=True)
        summaries = {
            h.name: data_summary(h.kind, splits[h.name], enc[h.name], h.name) for h in heads
        }
        atomic_json(out / "data_summary.json", nest_heads(summaries))

    # ---- optimisation plan: settings the config leaves out are chosen from data and model ---
    steps_per_epoch = sum(math.ceil(len(e["train"]) / cfg.train.batch_size) for e in enc.values())
    hidden = getattr(model.config, "hidden_size", None)
    t, chosen = auto.resolve(cfg.train, steps_per_epoch, hidden, lora=cfg.model.lora is not None)
    cfg = cfg.model_copy(update={"train": t})
    # Model settings left on `auto`: config.yaml holds the value used, auto.json why.
    picks = {
        "pooling": (
            getattr(model.config, POOLING_KEY, None),
            getattr(model, "tailorml_pooling_why", ""),
        ),
        "head_init": (head_init, why),
    }
    used = {
        k: v for k, (v, _) in picks.items() if v is not None and getattr(cfg.model, k) == "auto"
    }
    chosen.update({f"model.{k}": {"value": v, "why": picks[k][1]} for k, v in used.items()})
    if used:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=used)})
    if cfg.train.contrastive == "auto":
        chosen["train.contrastive"] = {"value": use_stage, "why": stage_why}
        t = t.model_copy(update={"contrastive": use_stage})
        cfg = cfg.model_copy(update={"train": t})
    if use_stage:
        chosen["model.pooling"] = {"value": "mean", "why": "the contrastive stage trains the "
                                   "averaged token states"}  # fmt: skip
        for key in [k for k in chosen if k in FINE_TUNING_KEYS]:
            del chosen[key]  # chosen for a loop that does not run: not printed, not recorded
        if cfg.train.frozen_candidate == "auto":
            frozen_why = "the contrastive stage's model is built on the same averaged features"
    if cfg.train.frozen_candidate == "auto":
        chosen["train.frozen_candidate"] = {"value": use_frozen, "why": frozen_why}
        t = t.model_copy(update={"frozen_candidate": use_frozen})
        cfg = cfg.model_copy(update={"train": t})
    if cfg.train.precision == "auto":  # config.yaml holds the precision used, auto.json why
        chosen["train.precision"] = {"value": procs.precision, "why": procs.precision_why}
        t = t.model_copy(update={"precision": procs.precision})
        cfg = cfg.model_copy(update={"train": t})
    if main:
        record_plan(out, cfg, chosen)
    if head_init == "probe" and not has_checkpoint and not use_stage:  # a checkpoint holds it
        if main:
            rows = sum(len(enc[h.name]["train"]) + len(enc[h.name]["eval"]) for h in heads)
            console.print(f"  linear probe of the output layer: encoding {rows:,} rows once ...")
        probed = probe.probe_heads(model, heads, enc, pad_id, acc.device, t.eval_batch_size)
        if main:
            atomic_json(out / "probe.json", probed)
            console.print(
                f"  linear probe of the output layer: {probed['seconds']} s, {probed['heads']}"
            )
    assert t.lr is not None and (t.epochs is not None or t.max_steps is not None)
    total_steps = t.max_steps or max(1, math.ceil((t.epochs or 1.0) * steps_per_epoch))
    # The contrastive stage writes no checkpoints (it takes minutes): it always starts afresh.
    resumed = has_checkpoint and not use_stage
    run = start_training(model, t, total_steps, metric, acc, out, ckpt_dir, resumed, main)
    model, raw_model, optimizer, scheduler = run.model, run.raw_model, run.optimizer, run.scheduler
    state, logger = run.state, run.logger
    by_name = {h.name: h for h in heads}
    weights = {n: (cfg.heads[n].loss_weight if cfg.heads else 1.0) for n in by_name}

    def evaluate_split(split: str, net: Any = None) -> dict[str, Any]:
        # The unwrapped model: DDP would broadcast buffers on each forward, and ranks run
        # different numbers of eval batches, so a wrapped forward here would deadlock.
        per: dict[str, dict[str, Any]] = {}
        for h in heads:
            e = enc[h.name][split]
            logits, loss = distributed_logits(
                net or raw_model, e, t.eval_batch_size, pad_id, acc, h
            )
            per[h.name] = {**h.kind.compute_metrics(logits, e.labels, h.labels), "loss": loss}
        return combine_metrics(per)

    def step_loss(net: Any, head_name: str, idx: Any) -> Any:
        """Per-example loss of one micro-batch; it sees only this head's logit columns."""
        h, e = by_name[head_name], enc[head_name]["train"]
        inputs = {k: v.to(acc.device) for k, v in collate(e, idx, pad_id).items()}
        targets = h.kind.label_tensor([e.labels[i] for i in idx], h.size).to(acc.device)
        with acc.autocast():
            logits = net(**inputs).logits[:, h.columns]  # (batch, head size)
        if loss_fn is not None:
            return loss_fn(logits, targets, inputs, idx)
        return h.kind.loss(logits, targets)

    # ---- the loop -----------------------------------------------------------------------------
    lengths = {h.name: enc[h.name]["train"].lengths for h in heads}
    eval_memo = EvalMemo(lambda: evaluate_split("eval"), state)
    loop: LoopResult
    if use_stage:  # the stage and the fitted output layer are the model: no loop follows
        loop = contrastive.stage(
            raw_model, heads, enc, pad_id, acc, t.seed, t.eval_batch_size, state, logger, out, main
        )
    else:
        loop = train_loop(
            model=model,
            raw_model=raw_model,
            optimizer=optimizer,
            scheduler=scheduler,
            acc=acc,
            t=t,
            lengths=lengths,
            step_loss=step_loss,
            evaluate=eval_memo,
            weights=weights,
            state=state,
            ckpt_dir=ckpt_dir,
            logger=logger,
            stop_after_steps=stop_after_steps,
            on_eval=on_eval,
        )

    # ---- best model, final evaluation, report ------------------------------------------------
    if not use_stage:
        load_best(raw_model, ckpt_dir)
    results: dict[str, Any] = {"eval": eval_memo.final(), "test": evaluate_split("test")}
    kept_model = raw_model
    if use_frozen:  # the frozen encoder + a fitted output layer, kept when it scores higher
        if main:
            console.print("  frozen candidate: fitting the output layer on the frozen encoder ...")
        cand, fit = frozen.build(
            cfg.model, heads, tokenizer, enc, pad_id, acc.device, t.eval_batch_size
        )
        scores = {split: evaluate_split(split, cand) for split in ("eval", "test")}
        results["candidates"] = frozen.summary(metric, results, scores, fit)
        keep = results["candidates"]["kept"] == "frozen"
        chosen["train.frozen_candidate"] = {
            "value": cfg.train.frozen_candidate,
            "why": frozen_why,
            "kept": results["candidates"]["kept"],
        }
        if keep:  # the run folder holds the frozen model; config.yaml says how it pools
            results.update(scores)
            kept_model = cand
            model_cfg = cfg.model.model_copy(update={"pooling": "mean"})
            cfg = cfg.model_copy(update={"model": model_cfg})
            chosen["model.pooling"] = {
                "value": "mean",
                "why": "the frozen candidate was kept, and it averages the token states",
            }
        if main:
            record_plan(out, cfg, chosen, quiet=True)
            console.print(f"  frozen candidate: {results['candidates']['why']}", highlight=False)
    replica_diff = replica_max_diff(raw_model, world)
    results["train"] = {
        "replicas_identical": replica_diff == 0.0,
        "max_replica_param_diff": replica_diff,
        "steps": state["global_step"],
        "best_step": state["best_step"],
        "metric_for_best": metric,
        "stopped_by": loop.stopped_by,
        "cooldown_start": state.get("cooldown_start"),
        "best_before_cooldown": state.get("best_before_cooldown"),
        "processes": world,
        "train_seconds": round(loop.train_seconds, 3),
        "train_samples_per_s": round(loop.samples / loop.train_seconds, 2),
        "threads_per_process": procs.threads,
        **({"contrastive": state["contrastive"]} if use_stage else {}),
        **size,
        **peak_memory(torch.cuda.is_available()),
    }
    if main:
        from tailorml.evaluate.metrics import scalar_metrics
        from tailorml.train.report import write_report

        for split in ("eval", "test"):
            logger.log(state["global_step"], f"final_{split}", scalar_metrics(results[split]))
        info = task_json(heads, cfg.model.base, lora_task_fields(cfg.model))
        save_model_folder(out, kept_model, tokenizer, info)
        atomic_json(out / "eval.json", results)
        write_report(out, cfg.name, cfg.model.base, heads, results, splits)
        for h in heads:
            print_results(results, h)
        tr = results["train"]
        console.print(
            f"Peak memory: {tr['peak_memory_mb']:,.0f} MB ({tr['peak_memory_kind']}); "
            f"trained {tr['trainable_params']:,} of {tr['total_params']:,} parameters.",
            highlight=False,
        )
    logger.close()
    acc.wait_for_everyone()
    acc.end_training()
    return results
