"""Supervised fine-tuning of a causal LM (task `generation`): the workflow in one readable file.

    check config and data -> tokenizer + chat template -> model (LoRA adapters when `model.lora`
    is set) -> tokens with the loss on the answers only
    -> packed blocks (or padded rows) -> train (tailorml.train.loop) -> best checkpoint
    -> eval/test loss and perplexity + greedy answers to test prompts scored -> model folder
    -> eval.json, report.md

`tailor finetune` runs this recipe for a task of the causal-LM family. It shares the loop,
optimizer, schedule, checkpoints (exact resume), logging and run folder with the classifier
recipe (tailorml/recipes/finetune.py); what differs is the data (tailorml/data/sft.py) and the
loss (the mean next-token cross-entropy over the learned tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tailorml import env
from tailorml.config.schema import RunConfig
from tailorml.data.sft import ChatEncoded, collate_lm, encode_chats, prepare_chat_splits, units_of
from tailorml.errors import ConfigError
from tailorml.evaluate.lm import loss_sum, perplexity_metrics
from tailorml.files import atomic_json
from tailorml.models import build_model
from tailorml.models.causal_lm import (
    causal_base_folder,
    check_causal_base,
    check_causal_lora_targets,
    load_causal_tokenizer,
    token_loss_sums,
)
from tailorml.models.lora import task_fields as lora_task_fields
from tailorml.predictors.generator import Generator, sample_scores
from tailorml.tasks import find_task
from tailorml.train import auto
from tailorml.train.distributed import all_reduce_sum, replica_max_diff, start_processes
from tailorml.train.loop import EvalMemo, load_best, start_training, train_loop
from tailorml.train.progress import console
from tailorml.train.report import write_generation_report
from tailorml.train.run_folder import prepare_run_dir, record_plan, resume_point, save_model_folder
from tailorml.train.summary import model_size, peak_memory

DATA_KEYS = ("prompt_column", "response_column", "messages_column", "max_length")


def sft(
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_steps: int | None = None,
    start_if_nothing: bool = False,
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
) -> dict[str, Any]:
    """Run the recipe; returns eval.json's content. Arguments as in `finetune`."""
    env.setup()
    import torch

    # ---- everything that can fail on bad input happens before anything is written ----------
    task = find_task(cfg.task.type)
    check_causal_base(cfg.model.base)
    metric = cfg.train.metric_for_best or task.default_metric
    if metric not in task.metrics:
        raise ConfigError(
            f"`train.metric_for_best` = {metric!r} is not reported for {task.name}. Choose one "
            f"of {list(task.metrics)}."
        )
    check_causal_lora_targets(cfg.model)
    splits = prepare_chat_splits(cfg)
    out = prepare_run_dir(Path(cfg.output_dir), resume, overwrite)
    ckpt_dir, has_checkpoint = resume_point(out, resume, start_if_nothing)

    procs = start_processes(cfg.train)
    acc, world, main = procs.acc, procs.world, procs.main

    # ---- model and tokens ---------------------------------------------------------------------
    tokenizer = load_causal_tokenizer(causal_base_folder(cfg.model.base))
    model = build_model(cfg.model, [], tokenizer, family=task.family)  # LoRA: adapters only
    size = model_size(model) if main else {}
    pad_id = tokenizer.pad_token_id
    d = cfg.data
    enc: dict[str, ChatEncoded] = {
        s: encode_chats(tokenizer, getattr(splits, s), d.max_length)
        for s in ("train", "eval", "test")
    }
    units = {s: units_of(e, d.max_length, d.packing) for s, e in enc.items()}
    train_enc, train_units = enc["train"], units["train"]
    unit_lengths = np.array([sum(len(train_enc.input_ids[i]) for i in u) for u in train_units])
    if main:
        out.mkdir(parents=True, exist_ok=True)
        summary = splits.summary()
        for s, e in enc.items():
            summary["splits"][s].update(
                truncated=e.n_truncated,
                mean_tokens=float(e.lengths.mean()) if len(e) else 0.0,
                learned_tokens=e.n_target_tokens,
                units=len(units[s]),
            )
        summary["packing"] = d.packing
        atomic_json(out / "data_summary.json", summary)
        for s in ("train", "eval", "test"):
            x = summary["splits"][s]
            console.print(
                f"  {s}: {x['rows']} rows, {x['truncated']} truncated to {d.max_length} tokens, "
                f"{x['mean_tokens']:.1f} tokens/row, {x['learned_tokens']} answer tokens, "
                f"{x['units']} {'blocks' if d.packing else 'rows'}  ({x['source']})",
                highlight=False,
            )
        for note in splits.notes:
            console.print(f"  {note}", highlight=False)

    # ---- optimisation plan --------------------------------------------------------------------
    steps_per_epoch = math.ceil(len(train_units) / cfg.train.batch_size)
    hidden = getattr(model.config, "hidden_size", None)
    t, chosen = auto.resolve(cfg.train, steps_per_epoch, hidden, lora=cfg.model.lora is not None)
    cfg = cfg.model_copy(update={"train": t})
    if main:
        record_plan(out, cfg, chosen)
    assert t.lr is not None and (t.epochs is not None or t.max_steps is not None)
    total_steps = t.max_steps or max(1, math.ceil((t.epochs or 1.0) * steps_per_epoch))
    run = start_training(model, t, total_steps, metric, acc, out, ckpt_dir, has_checkpoint, main)
    model, raw_model, optimizer, scheduler = run.model, run.raw_model, run.optimizer, run.scheduler
    state, logger = run.state, run.logger
    learned = {"tokens": 0}

    def evaluate_split(split: str) -> dict[str, Any]:
        # Every rank scores its share of the batches; the sums are added over ranks.
        total, tokens = loss_sum(
            raw_model, enc[split], units[split], t.eval_batch_size, pad_id, d.packing,
            acc.device, acc.autocast, acc.process_index, world,
        )  # fmt: skip
        total, tokens = all_reduce_sum(total, world), int(all_reduce_sum(tokens, world))
        return {**perplexity_metrics(total, tokens), "tokens": tokens, "n": len(enc[split])}

    def step_loss(net: Any, head_name: str, idx: Any) -> Any:
        """Per-unit loss of one micro-batch, scaled so that their mean is the mean token loss
        of the micro-batch (every learned token counts the same, whatever its block)."""
        batch = collate_lm(train_enc, [train_units[i] for i in idx], pad_id, d.packing)
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        with acc.autocast():
            sums, counts = token_loss_sums(net, batch)  # (units,), (units,)
        n_tokens = int(counts.sum())
        learned["tokens"] += n_tokens
        return sums * (len(idx) / max(n_tokens, 1))

    # ---- the loop -----------------------------------------------------------------------------
    eval_memo = EvalMemo(lambda: evaluate_split("eval"), state)
    loop = train_loop(
        model=model,
        raw_model=raw_model,
        optimizer=optimizer,
        scheduler=scheduler,
        acc=acc,
        t=t,
        lengths={"": unit_lengths},
        step_loss=step_loss,
        evaluate=eval_memo,
        weights={"": 1.0},
        state=state,
        ckpt_dir=ckpt_dir,
        logger=logger,
        stop_after_steps=stop_after_steps,
        on_eval=on_eval,
    )

    # ---- best model, final evaluation, samples, report ---------------------------------------
    load_best(raw_model, ckpt_dir)
    results: dict[str, Any] = {"eval": eval_memo.final(), "test": evaluate_split("test")}
    replica_diff = replica_max_diff(raw_model, world)
    results["train"] = {
        "replicas_identical": replica_diff == 0.0,
        "max_replica_param_diff": replica_diff,
        "steps": state["global_step"],
        "best_step": state["best_step"],
        "metric_for_best": metric,
        "stopped_by": loop.stopped_by,
        "processes": world,
        "packing": d.packing,
        "train_seconds": round(loop.train_seconds, 3),
        "train_samples_per_s": round(loop.samples / loop.train_seconds, 2),
        "train_tokens_per_s": round(learned["tokens"] * world / loop.train_seconds, 1),
        "threads_per_process": procs.threads,
        **size,
        **peak_memory(torch.cuda.is_available()),
    }
    if main:
        examples: list[dict[str, Any]] = []
        n = min(cfg.generate.samples, len(splits.test))
        if n:
            gen = Generator(raw_model.eval(), tokenizer)
            scores, examples = sample_scores(
                gen,
                splits.test.prompts()[:n],
                splits.test.references()[:n],
                cfg.generate.max_new_tokens,
            )
            results["generated"] = {**scores, "max_new_tokens": cfg.generate.max_new_tokens}
            results["generated_examples"] = examples
        logger.log(state["global_step"], "final_eval", _scalars(results["eval"]))
        logger.log(state["global_step"], "final_test", _scalars(results["test"]))
        info = {
            "task": task.name,
            "family": task.family,
            "base": cfg.model.base,
            "data": {k: getattr(d, k) for k in DATA_KEYS},
            "heads": [],
            **lora_task_fields(cfg.model),  # LoRA: the base the adapter applies to
        }
        save_model_folder(out, raw_model, tokenizer, info)
        atomic_json(out / "eval.json", results)
        write_generation_report(out, cfg.name, cfg.model.base, results, examples, splits.notes)
        for split in ("eval", "test"):
            m = results[split]
            console.print(
                f"  {split}: loss {m['loss']:.4f}, perplexity {m['perplexity']:.3f}",
                highlight=False,
            )
        if "generated" in results:
            g = results["generated"]
            console.print(
                f"  generated ({g['samples']} test rows): ROUGE-L {g['rouge_l']:.3f}, "
                f"token F1 {g['token_f1']:.3f}, exact match {g['exact_match']:.3f}",
                highlight=False,
            )
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


def _scalars(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items() if k in ("loss", "perplexity")}
