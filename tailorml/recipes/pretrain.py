"""Self-supervised pretraining (`tailor pretrain`): the workflow in one readable file.

    check config, corpus and base -> tokenizer (the base's, or trained on the corpus)
    -> model (the base, or a random stock transformers model of a preset size)
    -> token shards (cached, memory-mapped) -> blocks -> train (tailorml.train.loop)
    -> best checkpoint -> held-out loss and perplexity, samples -> model folder (a base that
    `tailor finetune` takes as `model.base`) -> eval.json, report.md

Objectives: `mlm` (BERT's masked-LM: 80/10/10 replacement, loss on the chosen tokens) and `clm`
(next-token loss on every token). The loop, optimizer, schedule, checkpoints (exact resume),
logging and torchrun processes are the fine-tuning recipes' (tailorml/train/).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tailorml import env
from tailorml.config.schema import PretrainConfig, RunConfig
from tailorml.data.corpus import CorpusFile, expand_corpus, iter_documents
from tailorml.data.masking import Masker, eval_rng, train_rng
from tailorml.data.shards import (
    Blocks,
    Shards,
    build_shards,
    eval_block_ids,
    held_out,
    weighted_units,
)
from tailorml.errors import ConfigError, DataError
from tailorml.evaluate.lm import perplexity_metrics
from tailorml.files import atomic_json
from tailorml.models.causal_lm import cache_dir
from tailorml.models.pretrain import (
    build_scratch,
    check_base,
    init_shape,
    load_base,
    loss_module,
    pooler_tensors,
    separator_id,
    tokenizer_hash,
    train_tokenizer,
)
from tailorml.train import auto
from tailorml.train.distributed import all_reduce_sum, replica_max_diff, start_processes
from tailorml.train.flops import device_peak_flops, flops_per_token, mfu
from tailorml.train.loop import load_best, start_training, train_loop
from tailorml.train.progress import console
from tailorml.train.report import write_pretrain_report
from tailorml.train.run_folder import prepare_run_dir, record_plan, resume_point, save_model_folder
from tailorml.train.summary import model_size, peak_memory

FAMILY = {"mlm": "masked-lm", "clm": "causal-lm"}


def pretrain(
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_steps: int | None = None,
    start_if_nothing: bool = False,
) -> dict[str, Any]:
    """Run the recipe; returns eval.json's content. `stop_after_steps` simulates an interrupt
    (tests): a checkpoint is written and KeyboardInterrupt raised."""
    env.setup()
    import torch

    # ---- everything that can fail on bad input happens before anything is written ----------
    p = cfg.pretrain
    if p is None:
        raise ConfigError(
            "The config has no `pretrain:` section. Add one (see configs/pretrain-*.yaml)."
        )
    if cfg.train.contrastive is True:
        from tailorml.train.contrastive import other_family

        raise ConfigError(other_family("a pretraining run"))
    objective = p.objective
    files = expand_corpus(p.corpus)
    if cfg.model.init is None:
        check_base(cfg.model.base, objective, p.block_size)
    out = prepare_run_dir(Path(cfg.output_dir), resume, overwrite)
    ckpt_dir, has_checkpoint = resume_point(out, resume, start_if_nothing)

    procs = start_processes(cfg.train)
    acc, world, main = procs.acc, procs.world, procs.main
    if main:
        out.mkdir(parents=True, exist_ok=True)

    # ---- tokenizer and model --------------------------------------------------------------------
    if cfg.model.init is not None:
        tokenizer = _scratch_tokenizer(cfg, files, out, acc)
        model = build_scratch(cfg.model.init, tokenizer)
        base_name = f"scratch ({cfg.model.init.arch}, {cfg.model.init.preset})"
    else:
        model, tokenizer = load_base(cfg.model.base, objective)
        base_name = cfg.model.base
    size = model_size(model) if main else {}
    # Model FLOPs, forward + backward; an mlm head runs on the masked rows only.
    per_token = flops_per_token(model, p.block_size, p.mask_prob if objective == "mlm" else 1.0)
    peak, peak_source = device_peak_flops(acc.device, p.peak_tflops)

    # ---- token shards and blocks ----------------------------------------------------------------
    shards = _shards(p, files, tokenizer, acc, main)
    span = p.block_size - 2 if objective == "mlm" else p.block_size  # + [CLS] ... [SEP]
    train_blocks, eval_blocks = shards.blocks("train", span), shards.blocks("eval", span)
    _check_blocks(p, shards, train_blocks, eval_blocks)
    weights = _entry_weights(p)
    units = weighted_units(train_blocks, files, weights, cfg.train.seed)
    eval_ids = eval_block_ids(len(eval_blocks), p.max_eval_blocks)
    data_summary = {
        "shards": str(shards.folder),
        "cache_hit": shards.hit,
        "files": len(files),
        "documents": {s: shards.documents(s) for s in ("train", "eval")},
        "tokens": {s: shards.tokens(s) for s in ("train", "eval")},
        "blocks": {"train": len(train_blocks), "eval": len(eval_blocks)},
        "units_per_epoch": len(units),
        "eval_blocks_used": len(eval_ids),
        "tokens_dropped": {"train": train_blocks.dropped, "eval": eval_blocks.dropped},
        "block_size": p.block_size,
        "dtype": shards.index["dtype"],
    }
    if main:
        atomic_json(out / "data_summary.json", data_summary)
        d = data_summary
        console.print(
            f"  corpus: {d['files']} file(s), {d['documents']['train']:,} train / "
            f"{d['documents']['eval']:,} held-out documents, {d['tokens']['train']:,} / "
            f"{d['tokens']['eval']:,} tokens -> {d['blocks']['train']:,} / {d['blocks']['eval']:,}"
            f" blocks of {p.block_size} ({'cached' if shards.hit else 'tokenized'}: "
            f"{shards.folder})",
            highlight=False,
        )

    # ---- optimisation plan --------------------------------------------------------------------
    steps_per_epoch = math.ceil(len(units) / cfg.train.batch_size)
    t, chosen = auto.resolve(cfg.train, steps_per_epoch, getattr(model.config, "hidden_size", None))
    cfg = cfg.model_copy(update={"train": t})
    if main:
        record_plan(out, cfg, chosen)
    assert t.lr is not None and (t.epochs is not None or t.max_steps is not None)
    total_steps = t.max_steps or max(1, math.ceil((t.epochs or 1.0) * steps_per_epoch))
    metric = t.metric_for_best or "loss"
    loss_mod = loss_module(model, objective)
    run = start_training(
        loss_mod, t, total_steps, metric, acc, out, ckpt_dir, has_checkpoint, main, model
    )  # checkpoints hold the language model, not its loss wrapper
    net, optimizer, scheduler = run.model, run.optimizer, run.scheduler
    state, logger = run.state, run.logger

    masker = None
    if objective == "mlm":
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"`model.base` = {cfg.model.base!r}: its tokenizer has no [MASK].")
        masker = Masker(
            p.mask_prob, tokenizer.mask_token_id, tokenizer.all_special_ids, len(tokenizer)
        )
    wrap = _wrapper(tokenizer, objective)

    def batch_of(rows: list[tuple[np.ndarray, np.random.Generator]]) -> dict[str, Any]:
        """(ids, masking generator) per block -> model inputs, shape (batch, block_size)."""
        ids, labels = [], []
        for block, rng in rows:
            x = wrap(block)
            if masker is not None:
                x, y = masker.mask(x, rng)
            else:
                y = x
            ids.append(x)
            labels.append(y)
        inp = torch.as_tensor(np.stack(ids), dtype=torch.long, device=acc.device)
        return {
            "input_ids": inp,
            "attention_mask": torch.ones_like(inp),
            "labels": torch.as_tensor(np.stack(labels), dtype=torch.long, device=acc.device),
        }

    def step_loss(module: Any, head_name: str, idx: Any) -> Any:
        """Per-block loss of one micro-batch, scaled so that their mean is the mean token loss
        of the micro-batch (every learned token counts the same)."""
        epoch = state["epoch"]
        rows = [(train_blocks[int(units[u])], train_rng(t.seed, epoch, int(u))) for u in idx]
        with acc.autocast():
            sums, counts = module(**batch_of(rows))  # (blocks,), (blocks,)
        return sums * (len(idx) / max(int(counts.sum()), 1))

    timeline = out / "samples.jsonl"

    def evaluate(record: bool = True) -> dict[str, Any]:
        # Every rank scores its share of the batches; the sums are added over ranks.
        loss_mod.eval()
        if record and main and p.samples and len(eval_ids):
            # One held-out sample per evaluation, so the report shows what training changed.
            model.eval()
            first = [eval_blocks[int(eval_ids[0])]]
            with torch.inference_mode():
                shown = (
                    _masked_samples(model, tokenizer, first, acc.device)
                    if objective == "mlm"
                    else _continuations(model, tokenizer, first, acc.device, new_tokens=24)
                )
            line = json.dumps({"step": state["global_step"], "samples": shown}) + "\n"
            with timeline.open("a", encoding="utf-8") as fh:
                fh.write(line)
        total, tokens = 0.0, 0
        size_ = t.eval_batch_size
        batches = [eval_ids[i : i + size_] for i in range(0, len(eval_ids), size_)]
        with torch.inference_mode():
            for b in batches[acc.process_index :: world]:
                rows = [(eval_blocks[int(i)], eval_rng(t.seed, int(i))) for i in b]
                with acc.autocast():
                    sums, counts = loss_mod(**batch_of(rows))
                total += float(sums.sum())
                tokens += int(counts.sum())
        loss_mod.train()
        total, tokens = all_reduce_sum(total, world), int(all_reduce_sum(tokens, world))
        return {**perplexity_metrics(total, tokens), "tokens": tokens, "blocks": len(eval_ids)}

    def log_extra(row: dict[str, float]) -> dict[str, float]:
        tokens_per_s = row["samples_per_s"] * p.block_size
        extra = {"perplexity": math.exp(min(row["loss"], 50.0)), "tokens_per_s": tokens_per_s}
        if peak:
            extra["mfu"] = mfu(tokens_per_s, per_token, peak, world)
        return extra

    # ---- the loop -----------------------------------------------------------------------------
    loop = train_loop(
        model=net,
        raw_model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        acc=acc,
        t=t,
        lengths={"": np.full(len(units), p.block_size, dtype=np.int64)},
        step_loss=step_loss,
        evaluate=evaluate,
        weights={"": 1.0},
        state=state,
        ckpt_dir=ckpt_dir,
        logger=logger,
        stop_after_steps=stop_after_steps,
        resume_hint="tailor pretrain CONFIG --resume",
        log_extra=log_extra,
    )

    # ---- best model, final evaluation, samples, report ---------------------------------------
    load_best(model, ckpt_dir)
    results: dict[str, Any] = {"eval": evaluate(record=False)}
    replica_diff = replica_max_diff(model, world)
    tokens_seen = state["samples_seen"] * p.block_size
    tokens_per_s = loop.samples * p.block_size / max(loop.train_seconds, 1e-9)
    results["train"] = {
        "objective": objective,
        "replicas_identical": replica_diff == 0.0,
        "max_replica_param_diff": replica_diff,
        "steps": state["global_step"],
        "best_step": state["best_step"],
        "metric_for_best": metric,
        "stopped_by": loop.stopped_by,
        "processes": world,
        "tokens_seen": tokens_seen,
        "train_seconds": round(loop.train_seconds, 3),
        "train_tokens_per_s": round(tokens_per_s, 1),
        "flops_per_token": per_token,
        "peak_flops_per_device": peak,
        "peak_source": peak_source,
        "mfu": round(mfu(tokens_per_s, per_token, peak, world), 6) if peak else None,
        "threads_per_process": procs.threads,
        **size,
        **peak_memory(torch.cuda.is_available()),
    }
    results["data"] = data_summary
    if main:
        model.eval()
        shown = [eval_blocks[int(i)] for i in eval_ids[: p.samples]]
        results["samples"] = (
            _masked_samples(model, tokenizer, shown, acc.device)
            if objective == "mlm"
            else _continuations(model, tokenizer, shown, acc.device)
        )
        results["samples_by_step"] = read_timeline(timeline)
        logger.log(state["global_step"], "final_eval", _scalars(results["eval"]))
        info: dict[str, Any] = {
            "task": f"pretrain-{objective}",
            "family": FAMILY[objective],
            "pretrained_base": True,
            "objective": objective,
            "base": base_name,
            "block_size": p.block_size,
            "heads": [],
            **({"init": init_shape(cfg.model.init.model_dump())} if cfg.model.init else {}),
        }
        folder = save_model_folder(out, model, tokenizer, info)
        if cfg.model.init is None:
            _add_tensors(folder / "model.safetensors", pooler_tensors(cfg.model.base, objective))
        atomic_json(out / "eval.json", results)
        write_pretrain_report(out, cfg.name, base_name, results)
        m, tr = results["eval"], results["train"]
        console.print(
            f"  eval: loss {m['loss']:.4f}, perplexity {m['perplexity']:.3f} "
            f"({m['tokens']:,} {'masked ' if objective == 'mlm' else ''}tokens); "
            f"{tr['tokens_seen']:,} tokens seen, {tr['train_tokens_per_s']:,.0f} tokens/s"
            + (f", MFU {100 * tr['mfu']:.1f}%" if tr["mfu"] is not None else ""),
            highlight=False,
        )
    logger.close()
    acc.wait_for_everyone()
    acc.end_training()
    return results


def _entry_weights(p: PretrainConfig) -> list[float]:
    return [1.0 if isinstance(e, str) else e.weight for e in p.corpus]


def _scratch_tokenizer(cfg: RunConfig, files: list[CorpusFile], out: Path, acc: Any) -> Any:
    """The run's own tokenizer, in RUN/tokenizer: a resumed run keeps it; otherwise the one
    cached for this corpus and these settings, else one trained on the training documents
    (held-out ones excluded) by the main process and cached. The cache matters: the
    `tokenizers` trainers break ties in hash order, so two trainings on the same text can
    number the pieces differently (seen with WordPiece), and the token shards are keyed by the
    tokenizer."""
    from transformers import AutoTokenizer

    from tailorml.data.shards import shard_key

    p, tc = cfg.pretrain, cfg.tokenizer
    assert p is not None
    folder = out / "tokenizer"
    kind = tc.type or ("wordpiece" if p.objective == "mlm" else "bpe")
    if acc.is_main_process and not (folder / "tokenizer.json").is_file():
        settings = {
            "kind": kind, "objective": p.objective, "vocab_size": tc.vocab_size,
            "min_frequency": tc.min_frequency, "eval_fraction": p.eval_fraction,
            "text_column": p.text_column,
        }  # fmt: skip
        cached = _cache_root(p) / "tokenizers" / shard_key(files, "train", settings)
        if not (cached / "tokenizer.json").is_file():
            console.print(f"  training a {kind} tokenizer ({tc.vocab_size:,} pieces)...")

            def texts() -> Any:
                for f in files:
                    for doc in iter_documents(f.path, p.text_column):
                        if not held_out(doc, p.eval_fraction):
                            yield doc

            tok = train_tokenizer(kind, p.objective, tc.vocab_size, tc.min_frequency, texts())
            _save_atomic(tok, cached)
        else:
            console.print(f"  {kind} tokenizer from the cache: {cached}", highlight=False)
        _save_atomic(AutoTokenizer.from_pretrained(str(cached)), folder)
    acc.wait_for_everyone()
    return AutoTokenizer.from_pretrained(str(folder))


def _save_atomic(tok: Any, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    if (folder / "tokenizer.json").is_file():  # another run saved it first: keep that one
        shutil.rmtree(tmp)
        return
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _cache_root(p: PretrainConfig) -> Path:
    return Path(p.cache_dir) if p.cache_dir else cache_dir() / "shards"


def _shards(
    p: PretrainConfig, files: list[CorpusFile], tokenizer: Any, acc: Any, main: bool
) -> Shards:
    """The main process writes the shards (or finds them cached); the others then read them."""
    root = _cache_root(p)
    sep = separator_id(tokenizer, p.objective)
    fingerprint = tokenizer_hash(tokenizer)

    def build() -> Shards:
        return build_shards(
            files, tokenizer, sep, p.eval_fraction, p.text_column, Path(root), fingerprint,
            progress=(lambda msg: console.print(f"  {msg}", highlight=False)) if main else None,
        )  # fmt: skip

    shards = build() if main else None
    acc.wait_for_everyone()
    return shards if shards is not None else build()


def _check_blocks(p: PretrainConfig, shards: Shards, train: Blocks, ev: Blocks) -> None:
    problems = []
    if len(train) == 0:
        problems.append(
            f"`pretrain.block_size` ({p.block_size}): the training documents hold "
            f"{shards.tokens('train'):,} tokens per file at most, less than one block. Lower "
            "the block size or add text to `pretrain.corpus`."
        )
    if len(ev) == 0:
        problems.append(
            f"`pretrain.eval_fraction` ({p.eval_fraction}): the {shards.documents('eval')} "
            f"held-out documents ({shards.tokens('eval'):,} tokens) make no block of "
            f"{p.block_size} tokens. Raise eval_fraction, lower block_size or add text."
        )
    if problems:
        raise DataError(problems)


def _wrapper(tokenizer: Any, objective: str) -> Callable[[np.ndarray], np.ndarray]:
    """A block's tokens as the model reads them: [CLS] ... [SEP] for mlm, as they are for clm."""
    if objective == "clm":
        return lambda block: block
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise ConfigError("The masked-LM tokenizer needs [CLS] and [SEP] tokens.")
    head, tail = np.asarray([cls], np.int64), np.asarray([sep], np.int64)
    return lambda block: np.concatenate([head, block, tail])


def _masked_samples(
    model: Any, tokenizer: Any, blocks: list[np.ndarray], device: Any
) -> list[dict[str, Any]]:
    """Held-out snippets with two tokens masked and the model's top-5 for each."""
    import torch

    out = []
    specials = set(tokenizer.all_special_ids)
    for block in blocks:
        ids = [int(i) for i in block[:32] if int(i) not in specials][:24]
        if len(ids) < 8:
            continue
        where = [len(ids) // 3, (2 * len(ids)) // 3]
        masked = list(ids)
        for w in where:
            masked[w] = tokenizer.mask_token_id
        x = torch.tensor([[tokenizer.cls_token_id, *masked, tokenizer.sep_token_id]], device=device)
        with torch.inference_mode():
            logits = model(input_ids=x).logits[0]  # (seq, vocab)
        preds = []
        for w in where:
            top = torch.topk(logits[w + 1].float(), 5).indices.tolist()
            preds.append(
                {
                    "answer": tokenizer.decode([ids[w]]).strip(),
                    "top5": [tokenizer.decode([i]).strip() for i in top],
                }  # fmt: skip
            )
        out.append({"text": tokenizer.decode(masked), "predictions": preds})
    return out


def read_timeline(path: Path) -> list[dict[str, Any]]:
    """The samples taken at each evaluation, one entry per step (a step evaluated again after a
    resume keeps its last entry)."""
    if not path.exists():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            row = json.loads(line)
            by_step[int(row["step"])] = row
    return [by_step[k] for k in sorted(by_step)]


def _continuations(
    model: Any, tokenizer: Any, blocks: list[np.ndarray], device: Any, new_tokens: int = 48
) -> list[dict[str, Any]]:
    """Greedy continuations of the first 24 tokens of held-out blocks."""
    import torch

    out = []
    for block in blocks:
        prompt = torch.as_tensor(block[:24], dtype=torch.long, device=device)[None]
        with torch.inference_mode():
            gen = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new_tokens,
                do_sample=False,
            )
        out.append(
            {
                "prompt": tokenizer.decode(prompt[0]),
                "continuation": tokenizer.decode(gen[0, prompt.shape[1] :]),
            }  # fmt: skip
        )
    return out


def _add_tensors(file: Path, extra: dict[str, Any]) -> None:
    """Add tensors to a saved model.safetensors (the base's pooler, see `pooler_tensors`)."""
    if not extra:
        return
    from safetensors.torch import load_file, save_file

    state = load_file(str(file))
    state.update({k: v for k, v in extra.items() if k not in state})
    tmp = file.with_name(f".{file.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(file)


def _scalars(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items() if k in ("loss", "perplexity")}
