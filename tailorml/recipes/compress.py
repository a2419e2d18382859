"""Compress a fine-tuned run: the whole workflow in one readable file.

    check input -> fp32 reference (accuracy, logits) -> build each variant in a temp folder
    (quantize / export / prune + recovery fine-tune / distill) -> parity + accuracy -> publish
    -> time every variant, interleaved -> choose the fastest within the accuracy budget
    -> RUN_DIR/compression.json (list of variants), compression_summary.json, compression.md, .png

Every variant folder RUN_DIR/compressed/<variant>/ runs on its own with
`tailorml.predictors.load_predictor` (ONNX variants need only onnxruntime and the tokenizer).
The pruned and distilled variants are retrained by a `tailor finetune` stage in a child process
(tailorml/launch.py), on the run's own config with the reshaped model as its base.
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tailorml import env
from tailorml.compress.folders import copy_tokenizer, folder_size, staged, write_task
from tailorml.compress.measure import all_logits, drift, latency_texts, time_predictor
from tailorml.compress.select import REFERENCE, accuracy_drop, choose
from tailorml.config.compress import VARIANTS, CompressOptions
from tailorml.data.examples import Examples
from tailorml.errors import ConfigError, DataError, TailorError
from tailorml.files import atomic_json
from tailorml.tasks.folder import ModelInfo, head_data_config, read_model_info
from tailorml.tasks.heads import HeadSpec, mean_over_heads, with_heads
from tailorml.train.progress import console

# A combination needs its torch source built first.
DEPENDS = {"pruned-onnx-int8": "pruned", "distilled-onnx-int8": "distilled"}
TRAINED = {"pruned", "distilled"}
# compress budgets accuracy: a head must report it (and macro-F1, shown beside it).
JUDGED_BY = ("accuracy", "macro_f1")

# Stated tolerances. An fp32 ONNX export must reproduce its PyTorch source: a larger drift is an
# exporter bug and stops the command. int8 variants must agree with fp32 on this share of eval
# predictions to be eligible for the budget selector.
EXPORT_ATOL = 1e-3
INT8_MIN_AGREEMENT = 0.95


class ParityError(TailorError):
    """An exported model's outputs drift from its PyTorch source past the stated tolerance."""


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


# ---------------------------------------------------------------------------------------------
# input checks: everything that can fail on bad input fails before anything is written


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
            hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"Unknown variant(s): {', '.join(hints)}. Choose from: {', '.join(VARIANTS)}."
        )
    wanted = set(flat) | {DEPENDS[n] for n in flat if n in DEPENDS}
    return [v for v in VARIANTS if v in wanted]


def check_inputs(run_dir: str | Path, opts: CompressOptions) -> RunInputs:
    from tailorml.tasks import all_tasks

    run = Path(run_dir)
    variants = parse_variants(opts.variants)
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


# ---------------------------------------------------------------------------------------------
# the recipe


def compress(run_dir: str | Path, opts: CompressOptions | None = None) -> dict[str, Any]:
    """Build, measure and choose; returns compression.json's content."""
    env.setup()
    import torch

    from tailorml.predictors import load_predictor

    opts = opts or CompressOptions()
    inp = check_inputs(run_dir, opts)
    run, info, ev = inp.run, inp.info, inp.eval
    out = run / "compressed"
    work = out / ".work"
    torch.set_num_threads(opts.threads)
    steps = len(inp.variants) + 2
    console.print(
        f"[bold]Compressing[/] {run}: {', '.join(inp.variants)} "
        f"({len(ev)} eval examples, {opts.threads} thread(s), budget {opts.budget:g} points)"
    )

    # ---- fp32 reference ---------------------------------------------------------------------
    _step(1, steps, "fp32", "scoring the fp32 PyTorch model (the reference)")
    ref_pred = load_predictor(inp.model_dir, threads=opts.threads)
    ref_logits = all_logits(ref_pred, ev.texts, ev.pairs)
    ref_q = inp.quality(ref_logits)
    entries: dict[str, dict[str, Any]] = {
        REFERENCE: {
            "name": REFERENCE,
            "path": "model",
            "runtime": "torch",
            "size_bytes": folder_size(inp.model_dir),
            **ref_q,
            "agreement": 1.0,
            "max_abs_logit_diff": 0.0,
            "parity_passed": True,
            "notes": {},
        }
    }
    predictors: dict[str, Any] = {REFERENCE: ref_pred}
    # torch source folder -> (verified, optimized fp32 ONNX file, its fusion statistics)
    onnx_cache: dict[str, tuple[Path, dict[str, int]]] = {}

    # ---- build every variant (each in a temp folder; published only when checked) ----------
    try:
        for i, name in enumerate(inp.variants, start=2):
            _step(i, steps, name, DESCRIBE[name])
            t0 = time.perf_counter()
            final = out / name
            notes: dict[str, Any] = {}
            with staged(final) as tmp:
                if name == "torch-int8":
                    _build_torch_int8(inp.model_dir, tmp, info)
                elif name in ("onnx-fp32", "onnx-int8"):
                    src = _onnx_fp32(inp.model_dir, work, onnx_cache, ev, notes)
                    _publish_onnx(name, src, tmp, inp.model_dir, info, int8=name == "onnx-int8")
                elif name == "pruned":
                    _build_pruned(inp, work, tmp, opts, notes)
                elif name == "distilled":
                    _build_distilled(inp, work, tmp, opts, notes)
                else:  # combinations: <source>-onnx-int8
                    source = out / DEPENDS[name]
                    src = _onnx_fp32(source, work, onnx_cache, ev, notes)
                    _publish_onnx(name, src, tmp, source, info, int8=True)
                pred = load_predictor(tmp, threads=opts.threads)
                logits = all_logits(pred, ev.texts, ev.pairs)
                par = inp.parity(ref_logits, logits)
                entry = _entry(name, pred, tmp, inp.quality(logits), par, notes)
                entry["build_s"] = round(time.perf_counter() - t0, 1)
                atomic_json(tmp / "parity.json", _parity_doc(name, par, entry, run))
            del pred
            predictors[name] = load_predictor(final, threads=opts.threads)
            entries[name] = entry
            _done(entry, ref_q["accuracy"])
    finally:
        if work.exists() and not opts.keep_work:
            shutil.rmtree(work, ignore_errors=True)

    # ---- time every variant, interleaved (fair under a drifting machine load) ---------------
    _step(steps, steps, "timing", f"latency at batch 1 and 32, {opts.repeats} repetitions")
    texts = latency_texts(ev.texts, opts.latency_texts)
    torch.set_num_threads(opts.threads)  # training may have changed it; torch's is process-wide
    timings = _time_all(predictors, texts, opts.repeats)
    ref = entries[REFERENCE]
    ref.update(timings[REFERENCE])
    for name, e in entries.items():
        e.update(timings[name])
        e["accuracy_drop_points"] = accuracy_drop(ref["accuracy"], e["accuracy"])
        e["speedup_b1"] = round(ref["latency_ms_b1_p50"] / e["latency_ms_b1_p50"], 3)
        e["speedup_b32"] = round(ref["latency_ms_b32_p50"] / e["latency_ms_b32_p50"], 3)
        e["size_ratio"] = round(ref["size_bytes"] / e["size_bytes"], 3)
    variants = list(entries.values())
    chosen, message = choose(variants, opts.budget)
    for e in variants:
        e["chosen"] = e["name"] == chosen
    result = {
        "run_dir": str(run),
        "budget_points": opts.budget,
        "chosen": chosen,
        "chosen_path": str(run / "model" if chosen == REFERENCE else out / chosen),
        "message": message,
        "threads": opts.threads,
        "repeats": opts.repeats,
        "latency_texts": len(texts),
        "eval_examples": len(ev),
        "eval_source": ev.source,
        "tolerances": {
            "onnx_export_max_abs_logit_diff": EXPORT_ATOL,
            "int8_min_agreement": INT8_MIN_AGREEMENT,
        },
        "machine": _machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "variants": variants,
    }
    _write_outputs(run, result)
    _print_table(result)
    return result


# ---------------------------------------------------------------------------------------------
# builders


DESCRIBE = {
    "torch-int8": "PyTorch dynamic int8 of the Linear layers",
    "onnx-fp32": "ONNX export + ONNX Runtime graph fusions",
    "onnx-int8": "ONNX Runtime dynamic int8",
    "pruned": "remove attention heads and FFN neurons, then a recovery fine-tune",
    "distilled": "a shallower student trained on the teacher's soft labels",
    "pruned-onnx-int8": "the pruned model as ONNX Runtime int8",
    "distilled-onnx-int8": "the distilled student as ONNX Runtime int8",
}


def _build_torch_int8(model_dir: Path, tmp: Path, info: dict[str, Any]) -> None:
    import torch

    from tailorml.models.classifier import load_classifier
    from tailorml.predictors.torch_runtime import quantize_linear

    model = load_classifier(model_dir)
    if getattr(model.config, "tailorml_pruned", False):  # pragma: no cover - not offered
        raise ConfigError("torch-int8 of a pruned model is not supported; use onnx-int8.")
    q = quantize_linear(model.eval())
    torch.save(q.state_dict(), str(tmp / "model_int8.pt"))
    model.config.save_pretrained(str(tmp))
    copy_tokenizer(model_dir, tmp)
    write_task(
        tmp,
        info,
        runtime="torch",
        torch_dynamic_int8=True,
        torch_int8_state="model_int8.pt",
        variant="torch-int8",
    )


def _onnx_fp32(
    source: Path,
    work: Path,
    cache: dict[str, tuple[Path, dict[str, int]]],
    ev: Examples,
    notes: dict[str, Any],
) -> Path:
    """Export `source` (a torch model folder) to an optimized fp32 ONNX file in `work`, verified
    against the torch model on eval texts; cached per source."""
    from transformers import AutoTokenizer

    from tailorml.compress.onnx_export import attention_shape, export_onnx, optimize_onnx
    from tailorml.models.classifier import load_classifier

    key = str(source.resolve())
    if key in cache:
        path, notes["onnx_fusions"] = cache[key]
        return path
    d = work / f"onnx-{len(cache)}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model = load_classifier(source)
    tok = AutoTokenizer.from_pretrained(str(source))
    export_onnx(model, tok, d / "raw.onnx")
    fused = optimize_onnx(d / "raw.onnx", d / "model.onnx", *attention_shape(model))
    notes["onnx_fusions"] = fused
    _check_export(model, tok, d / "model.onnx", ev)
    cache[key] = (d / "model.onnx", fused)
    return d / "model.onnx"


def _check_export(model: Any, tok: Any, path: Path, ev: Examples, n: int = 64) -> None:
    """Fail loudly when the fp32 ONNX graph drifts from PyTorch on eval texts (padded batches)."""
    import numpy as np
    import torch

    from tailorml.predictors.onnx_runtime import make_session, run_session

    sess = make_session(path)
    names = {i.name for i in sess.get_inputs()}
    worst = 0.0
    for i in range(0, min(n, len(ev)), 16):
        pairs = ev.pairs[i : i + 16] if ev.pairs is not None else None
        enc = tok(ev.texts[i : i + 16], pairs, padding=True, truncation=True, return_tensors="np")
        feed = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
        got = run_session(sess, feed)
        with torch.inference_mode():
            want = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        worst = max(worst, float(np.abs(got - want).max()))
    if not worst <= EXPORT_ATOL:
        raise ParityError(
            f"The ONNX export of {path.parent} drifts from PyTorch: max |logit diff| = "
            f"{worst:.2e} > tolerance {EXPORT_ATOL:g}. The variant was not written. Please "
            "report this with the model's config.json."
        )


def _publish_onnx(
    name: str, src: Path, tmp: Path, source: Path, info: dict[str, Any], int8: bool
) -> None:
    from tailorml.compress.onnx_export import quantize_onnx

    if int8:
        quantize_onnx(src, tmp / "model.onnx")
    else:
        shutil.copy2(src, tmp / "model.onnx")
    copy_tokenizer(source, tmp)
    write_task(
        tmp,
        info,
        runtime="onnxruntime",
        onnx_file="model.onnx",
        variant=name,
        precision="int8" if int8 else "fp32",
    )


def _recovery_config(
    inp: RunInputs, base: Path, out_dir: Path, epochs: float, opts: CompressOptions
) -> Any:
    """The run's own config, with the reshaped model as base and a short schedule."""
    from tailorml.config.load import validate_mapping

    raw = inp.cfg.model_dump(mode="json")
    raw["name"] = f"{raw.get('name', 'run')}-{out_dir.name}"
    raw["output_dir"] = str(out_dir.resolve())
    raw["model"]["base"] = str(base.resolve())
    t = raw["train"]
    t.update(epochs=epochs, max_steps=None, eval_every_steps=None, save_every_steps=None)
    t.update(keep_checkpoints=1, early_stopping_patience=None, threads=opts.train_threads)
    if opts.train_limit:
        raw["data"]["limit"] = opts.train_limit
    cfg, problems = validate_mapping(raw)
    if cfg is None:
        raise ConfigError(problems)
    return cfg


def _save_init(model: Any, model_dir: Path, dst: Path, info: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    from tailorml.tasks.folder import write_task_json

    if dst.exists():
        shutil.rmtree(dst)
    model.save_pretrained(str(dst), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(dst))
    write_task_json(dst, info)


def _train_batches(inp: RunInputs, n: int = 256, batch: int = 32) -> list[dict[str, Any]]:
    """Labeled batches of the first `n` training examples (for pruning importance)."""
    import numpy as np
    from transformers import AutoTokenizer

    from tailorml.data.batching import collate, encode
    from tailorml.data.prepare import prepare_splits

    (head, _), task = inp.heads[0], inp.heads[0][0].kind
    splits = prepare_splits(inp.cfg, task)
    sub = splits.train.subset(list(range(min(n, len(splits.train)))), "importance")
    tok = AutoTokenizer.from_pretrained(str(inp.model_dir))
    enc = encode(tok, sub, inp.model.max_length)
    pad = tok.pad_token_id or 0
    idx = np.arange(len(enc))
    out = []
    for i in range(0, len(idx), batch):
        rows = idx[i : i + batch]
        labels = task.label_tensor([enc.labels[r] for r in rows], head.size)
        out.append({**collate(enc, rows, pad), "labels": labels})
    return out


def _retrain(
    inp: RunInputs,
    model: Any,
    work: Path,
    tmp: Path,
    name: str,
    epochs: float,
    opts: CompressOptions,
    distill: dict[str, Any] | None = None,
) -> None:
    """Fine-tune a reshaped model (pruned, or a student) on the run's own data: a `tailor
    finetune` stage in a child process, on the run's config with the reshaped model as base (and
    the run's model as teacher for a student); then publish its weights into `tmp`."""
    from tailorml.config.load import dump_config
    from tailorml.launch import run_stage

    init, run_dir = work / f"{name}-init", work / f"{name}-run"
    _save_init(model, inp.model_dir, init, inp.info)
    cfg = _recovery_config(inp, init, run_dir, epochs, opts)
    if distill is not None:
        cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update=distill)})
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(dump_config(cfg), encoding="utf-8")
    run_stage(["finetune", str(cfg_path), "--overwrite"], f"The {name} fine-tune")
    _finish_trained(run_dir, tmp, inp.info, name)


def _finish_trained(run_dir: Path, tmp: Path, info: dict[str, Any], name: str) -> None:
    import json

    model = run_dir / "model"
    for p in model.iterdir():
        if p.is_file() and p.name != "task.json":
            shutil.copy2(p, tmp / p.name)
    write_task(tmp, info, runtime="torch", variant=name)
    ev = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    atomic_json(tmp / "training.json", {k: ev[k] for k in ("train",) if k in ev})


def _build_pruned(
    inp: RunInputs, work: Path, tmp: Path, opts: CompressOptions, notes: dict[str, Any]
) -> None:
    from tailorml.compress import prune
    from tailorml.models.classifier import load_classifier

    model = load_classifier(inp.model_dir)
    before = prune.count_params(model)
    heads, neurons = prune.importance(model, _train_batches(inp))
    plan = prune.plan(heads, neurons, opts.prune_heads, opts.prune_ffn)
    prune.apply(model, plan)
    after = prune.count_params(model)
    console.print(
        f"  pruned {before / 1e6:.2f}M -> {after / 1e6:.2f}M parameters "
        f"(heads per layer {model.config.tailorml_heads_per_layer}, FFN per layer "
        f"{model.config.tailorml_ffn_per_layer}); recovery fine-tune, "
        f"{opts.recovery_epochs:g} epoch(s):"
    )
    _retrain(inp, model, work, tmp, "pruned", opts.recovery_epochs, opts)
    notes.update(
        params_before=before,
        params=after,
        heads_per_layer=model.config.tailorml_heads_per_layer,
        ffn_per_layer=model.config.tailorml_ffn_per_layer,
        recovery_epochs=opts.recovery_epochs,
    )


def _build_distilled(
    inp: RunInputs, work: Path, tmp: Path, opts: CompressOptions, notes: dict[str, Any]
) -> None:
    from tailorml.compress.distill import make_student
    from tailorml.compress.prune import count_params, encoder_layers
    from tailorml.models.classifier import load_classifier

    teacher = load_classifier(inp.model_dir)
    n_teacher = len(encoder_layers(teacher))
    k = opts.student_layers or max(1, n_teacher // 2)
    student = make_student(teacher, k)
    console.print(
        f"  student: {k} of {n_teacher} layers (teacher layers "
        f"{student.config.tailorml_student_of_layers}), {count_params(student) / 1e6:.2f}M "
        f"parameters; distillation, {opts.distill_epochs:g} epoch(s):"
    )
    teacher_of = {
        "teacher": str(inp.model_dir.resolve()),
        "temperature": opts.distill_temperature,
        "alpha": opts.distill_alpha,
    }
    _retrain(inp, student, work, tmp, "distilled", opts.distill_epochs, opts, teacher_of)
    notes.update(
        layers=k,
        teacher_layers=student.config.tailorml_student_of_layers,
        params=count_params(student),
        epochs=opts.distill_epochs,
        temperature=opts.distill_temperature,
        alpha=opts.distill_alpha,
    )


# ---------------------------------------------------------------------------------------------
# measurement and outputs


def _entry(
    name: str,
    pred: Any,
    folder: Path,
    q: dict[str, Any],
    par: dict[str, Any],
    notes: dict[str, Any],
) -> dict[str, Any]:
    passed = True
    if name in ("torch-int8", "onnx-int8"):
        passed = par["agreement"] >= INT8_MIN_AGREEMENT
    return {
        "name": name,
        "path": f"compressed/{name}",
        "runtime": pred.runtime,
        "size_bytes": folder_size(folder),
        **q,
        "agreement": round(par["agreement"], 6),
        "max_abs_logit_diff": round(par["max_abs_logit_diff"], 6),
        "parity_passed": passed,
        "notes": notes,
    }


def _parity_doc(name: str, par: dict[str, float], entry: dict[str, Any], run: Path) -> dict:
    if name == "onnx-fp32":
        tol = f"max_abs_logit_diff <= {EXPORT_ATOL:g} against the PyTorch source (checked)"
    elif name in ("torch-int8", "onnx-int8"):
        tol = f"agreement >= {INT8_MIN_AGREEMENT:g} to be eligible for selection"
    else:
        tol = (
            "retrained model: no parity tolerance, the accuracy budget decides; its ONNX "
            f"export was checked against its PyTorch source (<= {EXPORT_ATOL:g})"
            if "onnx" in name
            else "retrained model: no parity tolerance, the accuracy budget decides"
        )
    return {
        "variant": name,
        "reference": str(run / "model") + " (PyTorch fp32)",
        "inputs": "the eval split",
        **par,
        "tolerance": tol,
        "passed": entry["parity_passed"],
    }


def _time_all(predictors: dict[str, Any], texts: list[str], repeats: int) -> dict[str, dict]:
    from tailorml.compress.measure import Timing

    parts: dict[str, list[Timing]] = {n: [] for n in predictors}
    names = list(predictors)
    for r in range(repeats):
        # Rotate the order each repetition so that no variant always runs first or last.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            pred = predictors[name]
            parts[name].append(time_predictor(pred, texts, repeats=1, warmup=20 if r == 0 else 3))
            console.print(
                f"  timing {r + 1}/{repeats} {name}: b1 p50 {parts[name][-1].b1_p50:.2f} ms",
                highlight=False,
            )
    out = {}
    import numpy as np

    for name, ts in parts.items():
        # Medians of the per-repetition percentiles: one noisy repetition cannot move them.
        out[name] = Timing(
            float(np.median([t.b1_p50 for t in ts])),
            float(np.median([t.b1_p99 for t in ts])),
            float(np.median([t.b32_p50 for t in ts])),
            float(np.median([t.b32_p99 for t in ts])),
            float(np.median([t.throughput for t in ts])),
        ).as_dict()
    return out


def _machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def _write_outputs(run: Path, result: dict[str, Any]) -> None:
    from tailorml.compress.report import plot, write_markdown

    # compression.json is the list of variants (each with `chosen`); the run-level summary
    # (choice, message, machine, tolerances) sits beside it.
    atomic_json(run / "compression.json", result["variants"])
    atomic_json(
        run / "compression_summary.json", {k: v for k, v in result.items() if k != "variants"}
    )
    md = run / "compression.md.tmp"
    write_markdown(md, result)
    md.replace(run / "compression.md")
    plot(run / "compression.png", result)


def _step(i: int, n: int, name: str, what: str) -> None:
    console.print(f"[bold cyan][{i}/{n}] {name}[/]: {what}", highlight=False)


def _done(e: dict[str, Any], ref_acc: float) -> None:
    warn = "" if e["parity_passed"] else " [red](agreement below tolerance: not eligible)[/]"
    console.print(
        f"  [green]done[/] {e['name']}: {e['size_bytes'] / 1e6:.1f} MB, accuracy "
        f"{e['accuracy']:.4f} (drop {accuracy_drop(ref_acc, e['accuracy']):.2f} points), agreement "
        f"{e['agreement']:.4f}, max |logit diff| {e['max_abs_logit_diff']:.3g}, "
        f"{e['build_s']:.0f}s{warn}",
        highlight=False,
    )


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from tailorml.compress.report import COLUMNS, rows

    table = Table(
        title=f"Compression ({result['threads']} thread(s), {result['machine']})", show_edge=False
    )
    for head, _, _ in COLUMNS:
        left = head in ("variant", "runtime", "chosen")
        table.add_column(head, justify="left" if left else "right", no_wrap=True)
    for r in rows(result["variants"]):
        table.add_row(*r)
    # The table is wide; off a terminal rich would fold it to 80 columns.
    Console(stderr=True, width=max(console.width, 190)).print(table)
    console.print(result["message"], highlight=False)
    console.print(f"Serve it: tailor serve {result['chosen_path']}", highlight=False)
    console.print(f"Report: {result['run_dir']}/compression.md", highlight=False)
