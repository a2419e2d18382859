"""Checks that span several fields of a raw run config (the task a head names, head names,
batch sizes, pretraining's corpus and model shape): run by `config.load` next to pydantic's
per-field validation, so that every problem is reported at once."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tailorml.tasks.base import TaskInfo


def _get(raw: dict, dotted: str, default: object = None) -> object:
    node: object = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def task_of(view: dict, prefix: str, problems: list[str]) -> TaskInfo | None:
    """The registered task a (head's) raw config names; an unknown name is added to `problems`."""
    from tailorml.errors import ConfigError
    from tailorml.tasks import find_task

    name = _get(view, "task.type", "classification")
    try:
        return find_task(str(name), f"{prefix}task.type")
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def cross_field_problems(raw: dict) -> list[str]:
    """Checks that involve several fields, run on the raw (merged) mapping so that they are
    reported together with field errors. Each message names the fields and the fix."""
    out: list[str] = []
    if _get(raw, "train.warmup_steps") is not None and _get(raw, "train.warmup_ratio") is not None:
        out.append("Both `train.warmup_steps` and `train.warmup_ratio` are set. Choose one.")
    if _get(raw, "pretrain") is not None:
        return out + _batch_problems(raw) + pretrain_problems(raw)
    heads = _get(raw, "heads")
    views: dict[str, dict] = {"": raw}
    if isinstance(heads, dict):
        views = {f"heads.{k}.": v for k, v in heads.items() if isinstance(v, dict)}
        if not heads:
            out.append("`heads` is empty. Give at least one head, or remove `heads`.")
        for name in heads:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
                out.append(
                    f"`heads.{name}`: head names may hold letters, digits, `_` and `-` only."
                )
        if _get(raw, "data.train"):
            out.append(
                "`data.train` is set at the top level and `heads` is set too. In a multi-task "
                "config each head has its own data: move it under `heads.<name>.data`."
            )
    for prefix, view in views.items():
        task = task_of(view, prefix, out)
        data = _get(view, "data", {})
        if task is not None and isinstance(data, dict):
            out.extend(task.config_problems(prefix, data))
        if not _get(view, "data.train"):
            out.append(f"`{prefix}data.train` is not set. Give the path of the training file.")
    return out + _batch_problems(raw)


def _batch_problems(raw: dict) -> list[str]:
    bs, acc = _get(raw, "train.batch_size", 32), _get(raw, "train.grad_accum_steps", 1)
    if isinstance(bs, int) and isinstance(acc, int) and acc > 0 and bs % acc:
        return [
            f"`train.batch_size` ({bs}) is not divisible by `train.grad_accum_steps` ({acc}). "
            "Pick values that divide."
        ]
    return []


def pretrain_problems(raw: dict) -> list[str]:
    """The cross-field checks of a pretraining config (`pretrain:` set): what it builds on,
    objective against architecture, the tokenizer's size, the model's shape and positions.
    Checks that need files (the corpus, a base folder) run in `tailor validate` and the run."""
    from tailorml.models.presets import ENCODERS, init_shape, min_vocab_size

    out: list[str] = []
    objective = _get(raw, "pretrain.objective")
    corpus = _get(raw, "pretrain.corpus")
    if not corpus:
        out.append(
            "`pretrain.corpus` is empty. Give at least one file, folder or glob of unlabeled "
            "text (.txt, .jsonl, .csv, .parquet)."
        )
    if _get(raw, "heads") is not None:
        out.append("`heads` is set in a pretraining config. Remove it (pretraining has no heads).")
    base, init = _get(raw, "model.base"), _get(raw, "model.init")
    if base is not None and init is not None:
        out.append(
            "Both `model.base` and `model.init` are set. Choose one: `model.base` continues a "
            "pretrained model, `model.init` builds a new one from scratch."
        )
    arch = _get(raw, "model.init.arch")
    want = {"mlm": "bert", "clm": "llama"}.get(str(objective))
    if isinstance(init, dict) and arch in ("bert", "llama") and want and arch != want:
        out.append(
            f"`model.init.arch` = {arch!r} does not fit `pretrain.objective` = {objective!r}: "
            f"{objective} trains a {want} model. Set `model.init.arch: {want}` or change the "
            "objective."
        )
    if init is None:
        b = base if base is not None else "minilm"
        if objective == "clm" and b in ENCODERS:
            out.append(
                f"`model.base` = {b!r} is an encoder; `pretrain.objective: clm` needs a causal "
                "LM: `smollm2`, a causal-LM folder, or `model.init: {arch: llama}`."
            )
        if objective == "mlm" and b == "smollm2":
            out.append(
                "`model.base` = 'smollm2' is a causal LM; `pretrain.objective: mlm` needs an "
                "encoder: `minilm`, `mpnet`, a masked-LM folder, or `model.init: {arch: bert}`."
            )
        if b == "tiny":
            out.append(
                "`model.base` = 'tiny' is for fine-tuning tests. For a tiny model to pretrain "
                "use `model.init: {arch: bert|llama, preset: tiny}`."
            )
        if isinstance(raw.get("tokenizer"), dict) and raw["tokenizer"]:
            out.append(
                "`tokenizer` is set, but `model.base` continues a pretrained model and keeps "
                "its tokenizer. Remove `tokenizer`, or use `model.init` to train from scratch."
            )
    if isinstance(init, dict) and objective in ("mlm", "clm"):
        shape = init_shape(init)
        if shape is not None and shape["hidden"] % shape["heads"]:
            out.append(
                f"`model.init.heads` ({shape['heads']}) does not divide `model.init.hidden` "
                f"({shape['hidden']}). Pick a head count that divides the hidden size."
            )
        block = _get(raw, "pretrain.block_size", 128)
        positions = _get(raw, "model.init.max_positions", 512)
        if isinstance(block, int) and isinstance(positions, int) and block > positions:
            out.append(
                f"`pretrain.block_size` ({block}) is larger than the model's positions "
                f"(`model.init.max_positions` = {positions}). Lower the block size or raise "
                "max_positions."
            )
        kind = _get(raw, "tokenizer.type") or ("wordpiece" if objective == "mlm" else "bpe")
        vocab = _get(raw, "tokenizer.vocab_size", 8000)
        least = min_vocab_size(str(kind), str(objective))
        if isinstance(vocab, int) and vocab < least:
            out.append(
                f"`tokenizer.vocab_size` = {vocab} is too small for a {kind} tokenizer: it "
                f"needs at least {least} (its special tokens"
                f"{' and the 256 bytes' if kind == 'bpe' else ''} plus room for pieces)."
            )
    metric = _get(raw, "train.metric_for_best")
    if metric is not None and metric not in ("loss", "perplexity"):
        out.append(
            f"`train.metric_for_best` = {metric!r} is not reported by pretraining. Choose loss "
            "or perplexity."
        )
    return out
