"""What `tailor compress` works on, checked before anything is written: the run folder, its
model's heads (each must report accuracy, which the budget is on), the variants asked for, and
the eval rows every variant is measured on (each head on its own eval split)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailorml.compress.measure import drift
from tailorml.config.compress import (
    GENERATION_ONLY,
    GENERATION_VARIANTS,
    VARIANTS,
    CompressOptions,
)
from tailorml.data.examples import Examples
from tailorml.errors import ConfigError, DataError
from tailorml.tasks.folder import ModelInfo, head_data_config, read_model_info
from tailorml.tasks.heads import HeadSpec, mean_over_heads, with_heads

# A combination needs its torch source built first.
DEPENDS = {"pruned-onnx-int8": "pruned", "distilled-onnx-int8": "distilled"}
TRAINED = {"pruned", "distilled"}
# compress budgets accuracy: a head must report it (and macro-F1, shown beside it).
JUDGED_BY = ("accuracy", "macro_f1")


@dataclass
class RunInputs:
    run: Path
    model_dir: Path
    model: ModelInfo
    eval: Examples
    cfg: Any  # RunConfig of the run (None when config.yaml is absent)
    variants: list[str]
    notes: list[str] = field(default_factory=list)
    # The heads and their eval rows: the one head on every row, or for a multi-task run each head
    # on its own eval split (the eval examples are the heads' eval splits one after the other).
    heads: list[tuple[HeadSpec, slice]] = field(default_factory=list)

    @property
    def info(self) -> dict[str, Any]:
        return self.model.raw

    def quality(self, logits: Any) -> dict[str, Any]:
        """accuracy and macro-F1 (with several heads: each head's, and their means)."""
        per = {}
        for h, rows in self.heads:
            m = h.kind.compute_metrics(logits[rows, h.columns], self.eval.labels[rows], h.labels)
            per[h.name] = {k: float(m[k]) for k in JUDGED_BY}
        return mean_over_heads(per, JUDGED_BY)

    def parity(self, ref: Any, got: Any) -> dict[str, Any]:
        """Drift from fp32 over every column; agreement is the lowest head's (each task says
        when two outputs give the same answer)."""
        per = {
            h.name: {"agreement": h.kind.agreement(ref[rows, h.columns], got[rows, h.columns], h)}
            for h, rows in self.heads
        }
        worst = min(p["agreement"] for p in per.values())
        return with_heads({**drift(ref, got), "agreement": worst}, per)


def parse_variants(names: list[str] | None) -> list[str]:
    if not names:
        return list(VARIANTS)
    flat = [n.strip() for item in names for n in item.split(",") if n.strip()]
    unknown = [n for n in flat if n not in VARIANTS]
    if unknown:
        import difflib

        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, VARIANTS, n=1)
            hint = "generation runs only" if n in GENERATION_VARIANTS else None
            hint = hint or (f"did you mean {close[0]!r}?" if close else None)
            hints.append(f"{n!r}" + (f" ({hint})" if hint else ""))
        raise ConfigError(
            f"Unknown variant(s): {', '.join(hints)}. Choose from: {', '.join(VARIANTS)}."
        )
    wanted = set(flat) | {DEPENDS[n] for n in flat if n in DEPENDS}
    return [v for v in VARIANTS if v in wanted]


def check_inputs(run_dir: str | Path, opts: CompressOptions) -> RunInputs:
    from tailorml.tasks import all_tasks

    run = Path(run_dir)
    variants = parse_variants(opts.variants)
    given = sorted(set(opts.model_fields_set) & set(GENERATION_ONLY))
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(
            f"{flags}: {'is an option' if len(given) == 1 else 'are options'} of generation runs; "
            f"{run} is measured by accuracy (--budget, in points). Leave them out."
        )
    if opts.budget < 0:
        raise ConfigError(f"--budget {opts.budget}: give an accuracy drop in points, >= 0.")
    if not run.is_dir():
        raise ConfigError(f"{run} does not exist. Give a run folder written by `tailor finetune`.")
    model_dir = run / "model"
    if not (model_dir / "task.json").is_file() or not (model_dir / "config.json").is_file():
        raise ConfigError(
            f"{run} is not a tailorml run folder: no model/task.json and model/config.json. "
            "Give the folder `tailor finetune` wrote (its output_dir)."
        )
    model = read_model_info(model_dir)
    judged = [t.name for t in all_tasks() if set(JUDGED_BY) <= set(t.metrics)]
    bad = [h for h in model.heads if h.task not in judged]
    if bad:
        what = ", ".join(f"{h.name} ({h.task})" if h.name else repr(h.task) for h in bad)
        raise ConfigError(
            f"{run}: compress keeps accuracy within a budget, so it takes {' and '.join(judged)} "
            f"models; this one is {what}."
        )
    if not model.single:  # what compress cannot do yet for several heads, said up front
        trained = [v for v in variants if v in TRAINED or DEPENDS.get(v) in TRAINED]
        if trained:
            raise ConfigError(
                f"{run} is a multi-task run: {', '.join(trained)} would retrain it, which "
                "compress does for single-task runs only. Choose from torch-int8, onnx-fp32, "
                "onnx-int8."
            )
        if opts.data is not None:
            raise ConfigError(
                f"--data: {run} is a multi-task run, measured on each head's eval split from "
                "its config.yaml. Leave out --data."
            )
    cfg = _run_config(run)
    if cfg is None and (set(variants) & TRAINED):
        need = ", ".join(v for v in variants if v in TRAINED or DEPENDS.get(v) in TRAINED)
        raise ConfigError(
            f"{run} has no config.yaml, so there is no training data for {need}. Restore the "
            "run's config.yaml or choose --variants torch-int8,onnx-fp32,onnx-int8."
        )
    parts = {h.name: _eval_examples(run, h, cfg, opts) for h in model.heads}
    ev = Examples.concat(list(parts.values()), "+".join(str(p.source) for p in parts.values()))
    heads, start = [], 0
    for h in model.heads:
        heads.append((h, slice(start, start + len(parts[h.name]))))
        start += len(parts[h.name])
    return RunInputs(run, model_dir, model, ev, cfg, variants, heads=heads)


def _run_config(run: Path) -> Any:
    from tailorml.config.load import load_config

    path = run / "config.yaml"
    return load_config(path) if path.is_file() else None


def _eval_examples(run: Path, head: HeadSpec, cfg: Any, opts: CompressOptions) -> Examples:
    """`head`'s eval rows: --data, else the run's own eval split (from its config.yaml)."""
    from tailorml.data.examples import build_examples
    from tailorml.data.prepare import prepare_splits
    from tailorml.data.readers import read_table

    if opts.data is not None:
        table = read_table(opts.data, key="--data")
        return build_examples(table, head_data_config(head), head.kind, head.labels, "--data")
    if cfg is None:
        raise DataError(
            f"{run} has no eval data: no config.yaml to find the run's eval split. Pass "
            "--data FILE (a labeled file with the run's text and label columns)."
        )
    try:
        splits = prepare_splits(cfg.head_views()[head.name], head.kind)
    except DataError as exc:
        raise DataError(
            [
                *exc.problems,
                f"{run}: the run's eval data could not be read (paths in config.yaml are "
                "relative to where `tailor finetune` ran). Run from there or pass --data FILE.",
            ]
        ) from None
    return splits.eval
