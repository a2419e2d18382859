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
# Vocabulary trimming keeps the tokens of the run's training texts (read through config.yaml).
DEPENDS.update(
    {
        "trimmed-onnx-int8": "trimmed",
        "pruned-trimmed-onnx-int8": "pruned",
        "distilled-trimmed-onnx-int8": "distilled",
    }
)
TRIMMED = {"trimmed", "pruned-trimmed-onnx-int8", "distilled-trimmed-onnx-int8"}
# Variants that read the run's training texts (vocabulary, calibration): single-task runs with
# config.yaml only.
CALIBRATED = {"onnx-int8-static"}
NEEDS_TEXTS = TRIMMED | CALIBRATED
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
    # The test split (each head's, in the same order), which selection judges only as a check
    # that eval's accuracy holds; None with --data or without config.yaml.
    test: Examples | None = None
    test_heads: list[tuple[HeadSpec, slice]] = field(default_factory=list)

    @property
    def info(self) -> dict[str, Any]:
        return self.model.raw

    def quality(self, logits: Any, split: str = "eval") -> dict[str, Any]:
        """accuracy and macro-F1 (with several heads: each head's, and their means) and the
        standard error of the accuracy, sqrt(p(1-p)/n) (of the heads' mean: their errors
        combined as independent)."""
        ex, heads = (self.eval, self.heads) if split == "eval" else (self.test, self.test_heads)
        assert ex is not None
        per, var = {}, 0.0
        for h, rows in heads:
            m = h.kind.compute_metrics(logits[rows, h.columns], ex.labels[rows], h.labels)
            per[h.name] = {k: float(m[k]) for k in JUDGED_BY}
            n = max(1, len(ex.labels[rows]))
            var += per[h.name]["accuracy"] * (1 - per[h.name]["accuracy"]) / n
        out = mean_over_heads(per, JUDGED_BY)
        out["accuracy_se"] = round(var**0.5 / len(heads), 6)
        return out

    def correct(self, logits: Any, split: str = "test") -> list[Any]:
        """Per head, whether each row's top class is its label (for paired differences)."""
        import numpy as np

        ex, heads = (self.eval, self.heads) if split == "eval" else (self.test, self.test_heads)
        assert ex is not None
        return [
            logits[rows, h.columns].argmax(-1) == np.asarray(ex.labels[rows], dtype=np.int64)
            for h, rows in heads
        ]

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
    trims = [v for v in variants if v in NEEDS_TEXTS or DEPENDS.get(v) in NEEDS_TEXTS]
    if trims and not model.single:
        raise ConfigError(
            f"{run} is a multi-task run: {', '.join(trims)} read the training texts (to trim "
            "the vocabulary or calibrate int8), which compress does for single-task runs only. "
            "Leave them out."
        )
    uses_train = TRAINED | NEEDS_TEXTS
    if cfg is None and (set(variants) & uses_train):
        need = ", ".join(v for v in variants if v in uses_train or DEPENDS.get(v) in uses_train)
        raise ConfigError(
            f"{run} has no config.yaml, so there is no training data for {need}. Restore the "
            "run's config.yaml or choose --variants torch-int8,onnx-fp32,onnx-int8."
        )
    both = {h.name: _eval_examples(run, h, cfg, opts) for h in model.heads}
    ev, heads = _joined(model.heads, {n: e for n, (e, _) in both.items()})
    tests = {n: t for n, (_, t) in both.items() if t is not None and len(t)}
    test, test_heads = _joined(model.heads, tests) if len(tests) == len(both) else (None, [])
    return RunInputs(
        run, model_dir, model, ev, cfg, variants, heads=heads, test=test, test_heads=test_heads
    )


def _joined(
    heads: list[HeadSpec], parts: dict[str, Examples]
) -> tuple[Examples, list[tuple[HeadSpec, slice]]]:
    """The heads' splits one after the other, and each head's rows."""
    ex = Examples.concat(list(parts.values()), "+".join(str(p.source) for p in parts.values()))
    rows, start = [], 0
    for h in heads:
        rows.append((h, slice(start, start + len(parts[h.name]))))
        start += len(parts[h.name])
    return ex, rows


def _run_config(run: Path) -> Any:
    from tailorml.config.load import load_config

    path = run / "config.yaml"
    return load_config(path) if path.is_file() else None


def _eval_examples(
    run: Path, head: HeadSpec, cfg: Any, opts: CompressOptions
) -> tuple[Examples, Examples | None]:
    """`head`'s eval rows: --data, else the run's own eval split (from its config.yaml); and its
    test split (None with --data)."""
    from tailorml.data.examples import build_examples
    from tailorml.data.prepare import prepare_splits
    from tailorml.data.readers import read_table

    if opts.data is not None:
        table = read_table(opts.data, key="--data")
        return build_examples(table, head_data_config(head), head.kind, head.labels, "--data"), None
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
    return splits.eval, splits.test


def train_texts(inp: RunInputs) -> tuple[list[str], list[str] | None]:
    """The training split's texts (and pairs) of a single-task run, as `tailor finetune` split
    them (the test split, when carved from train, is not among them)."""
    from tailorml.data.prepare import prepare_splits

    splits = prepare_splits(inp.cfg, inp.heads[0][0].kind)
    return splits.train.texts, splits.train.pairs
