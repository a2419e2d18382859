"""`tailor validate`: every problem of a run config and its data, at once, without training.

The config's own problems (unknown keys, wrong types, fields that contradict each other) and the
problems of what it points at (the base model, every head's data files, their columns and every
row, `train.metric_for_best`) are all reported together: the checks on inputs run on the config
with its invalid keys left at their defaults, so a typo elsewhere never hides a missing file.
The row checks are the ones training runs, so a config that validates does not stop on its data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tailorml.config.load import apply_overrides, lenient_config, read_yaml, validate_mapping
from tailorml.config.schema import RunConfig
from tailorml.errors import TailorError
from tailorml.models.presets import ENCODERS


def validate_config(path: str | Path, overrides: list[str] | None = None) -> list[str]:
    """Every problem found, each naming the field or file:line and the fix ([] = OK)."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    _, problems = validate_mapping(raw)
    cfg = lenient_config(raw)
    if cfg is not None:
        problems += check_inputs(cfg)
    return list(dict.fromkeys(problems))  # each once, in the order found


def check_inputs(cfg: RunConfig) -> list[str]:
    """The model base resolves, `train.metric_for_best` is reported, every head's files read
    and every row passes the checks training runs."""
    from tailorml.data.prepare import prepare_splits
    from tailorml.models.base import resolve_base
    from tailorml.tasks import find_task, get_task, task_names
    from tailorml.tasks.base import CAUSAL_LM, IMAGE_CLASSIFIER, SEQUENCE_CLASSIFIER
    from tailorml.tasks.heads import choose_metric, config_heads
    from tailorml.train.contrastive import check_config, other_family

    problems: list[str] = []

    def collect(fn: Any, prefix: str = "") -> None:
        try:
            fn()
        except TailorError as exc:
            problems.extend(f"{prefix}{p}" for p in exc.problems)

    if cfg.pretrain is not None:
        if cfg.train.contrastive is True:
            problems.append(other_family("a pretraining run"))
        collect(lambda: check_pretrain_inputs(cfg))
        return problems

    if cfg.heads is None and cfg.task.type in task_names():
        task = find_task(cfg.task.type)
        if task.family != SEQUENCE_CLASSIFIER and cfg.train.contrastive is True:
            problems.append(other_family(f"a {task.family} ({task.name})"))
        if task.family == CAUSAL_LM:  # the generation data path (tailorml/data/sft.py)
            from tailorml.data.sft import prepare_chat_splits
            from tailorml.models.causal_lm import check_causal_base, check_causal_lora_targets

            collect(lambda: check_causal_base(cfg.model.base))
            if not problems:
                collect(lambda: check_causal_lora_targets(cfg.model, convert=False))
            chosen = cfg.train.metric_for_best
            if chosen and chosen not in task.metrics:
                problems.append(
                    f"`train.metric_for_best` = {chosen!r} is not reported for {task.name}. "
                    f"Choose one of {list(task.metrics)}."
                )
            if cfg.data.train is not None:
                collect(lambda: prepare_chat_splits(cfg))
            return problems
        if task.family == IMAGE_CLASSIFIER:  # the image data path (tailorml/data/images.py)
            collect(lambda: check_image_inputs(cfg))
            return problems
    collect(lambda: resolve_base(cfg.model.base))
    if not problems:  # `model.lora.target_modules` against the base's layers (no weights read)
        from tailorml.models.classifier import check_lora_targets

        collect(lambda: check_lora_targets(cfg.model))
    collect(lambda: choose_metric(cfg.train.metric_for_best, config_heads(cfg)))
    splits: dict[str, Any] = {}  # each head's checked splits
    for name, view in cfg.head_views().items():
        if view.data.train is None or view.task.type not in task_names():
            continue  # reported by the config check
        prefix = f"heads.{name}: " if name else ""
        key = f"heads.{name}.task.type" if name else "task.type"

        def read(v: Any = view, k: str = key, n: str = name) -> None:
            splits[n] = prepare_splits(v, get_task(v.task.type, k))

        collect(read, prefix)
    if cfg.train.contrastive is True and not problems and len(splits) == len(cfg.head_views()):
        collect(lambda: check_config(cfg, splits))  # would the stage apply to these heads?
    return problems


def check_image_inputs(cfg: RunConfig) -> None:
    """An image-classification config's inputs: what the run refuses (heads, LoRA), the
    network's shape, `train.metric_for_best`, and every image read and checked as training
    reads it (bad images named by path). One error with every problem."""
    from tailorml.data.image_splits import prepare_image_splits
    from tailorml.models.images import base_folder
    from tailorml.tasks.heads import choose_metric, config_heads
    from tailorml.tasks.images import check_image_config

    problems: list[str] = []
    for check in (
        lambda: check_image_config(cfg),
        lambda: base_folder(cfg.model),
        lambda: choose_metric(cfg.train.metric_for_best, config_heads(cfg)),
        lambda: (
            prepare_image_splits(cfg, check_image_config(cfg).kind)
            if cfg.data.train is not None
            else None
        ),
    ):
        try:
            check()
        except TailorError as exc:
            problems += exc.problems
    if problems:
        from tailorml.errors import DataError

        raise DataError(list(dict.fromkeys(problems)))


def check_pretrain_inputs(cfg: RunConfig) -> None:
    """A pretraining config's inputs: every corpus file is found, readable, UTF-8 and holds
    the text column (each read through once, as tokenization will), and `model.base` is a
    model of the objective's kind whose positions hold the block. One error with every
    problem."""
    from tailorml.data.corpus import expand_corpus, iter_documents
    from tailorml.errors import DataError

    p = cfg.pretrain
    assert p is not None
    problems: list[str] = []
    files = expand_corpus(p.corpus, problems)
    documents = 0
    for f in files:
        try:
            documents += sum(1 for _ in iter_documents(f.path, p.text_column))
        except TailorError as exc:
            problems += exc.problems
    if files and not problems and documents == 0:
        problems.append("`pretrain.corpus`: the files hold no text. Check them and the column.")
    # A base of the wrong kind (or `tiny`) is reported by the config check.
    mismatch = (
        cfg.model.base == "tiny"
        or (p.objective == "clm" and cfg.model.base in ENCODERS)
        or (p.objective, cfg.model.base) == ("mlm", "smollm2")
    )
    if cfg.model.init is None and not mismatch:
        from tailorml.models.pretrain import check_base

        try:
            check_base(cfg.model.base, p.objective, p.block_size)
        except TailorError as exc:
            problems += exc.problems
    if problems:
        raise DataError(problems)
