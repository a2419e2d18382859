"""Compress a fine-tuned run: the whole workflow in one readable file.

    check input -> fp32 reference (accuracy, logits) -> build each variant in a temp folder
    (quantize / export / prune + recovery fine-tune / distill) -> parity + accuracy -> publish
    -> time every variant, interleaved -> choose the fastest within the accuracy budget
    -> RUN_DIR/compression.json (list of variants), compression_summary.json, compression.md, .png

Every variant folder RUN_DIR/compressed/<variant>/ runs on its own with
`tailorml.predictors.load_predictor` (ONNX variants need only onnxruntime and the tokenizer).
The pruned and distilled variants are retrained by a `tailor finetune` stage in a child process
(tailorml/launch.py), on the run's own config with the reshaped model as its base.

A generation run (task.json `family: causal-lm`) takes its own path, `compress_generation`:
fp32 and torch-int8, perplexity and greedy tokens/s, a perplexity budget; its folders load with
`Generator.load` (pieces in tailorml/compress/generation.py).
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tailorml import env
from tailorml.compress.folders import folder_size, staged
from tailorml.compress.inputs import DEPENDS, TRIMMED, check_inputs
from tailorml.compress.measure import all_logits, latency_texts, time_predictor
from tailorml.compress.report import machine, print_table, write_outputs
from tailorml.compress.select import (
    REFERENCE,
    TEST_Z,
    accuracy_drop,
    choose,
    choose_by_perplexity,
    pareto_front,
    ppl_increase,
)
from tailorml.compress.variants import (
    DESCRIBE,
    EXPORT_ATOL,
    build_distilled,
    build_pruned,
    build_torch_int8,
    build_trimmed,
    onnx_fp32,
    publish_onnx,
    publish_onnx_static,
    trimmed_source,
)
from tailorml.config.compress import CompressOptions
from tailorml.files import atomic_json
from tailorml.tasks.base import CAUSAL_LM, IMAGE_CLASSIFIER
from tailorml.tasks.folder import folder_family
from tailorml.train.progress import console

# int8 variants must agree with fp32 on this share of eval predictions to be eligible for the
# budget selector (the stated parity tolerance).
INT8_MIN_AGREEMENT = 0.95
# The variants the parity rule applies to: int8 and vocabulary trimming change a model without
# retraining it (a retrained one is judged by the accuracy budget alone).
PARITY_RULED = ("torch-int8", "onnx-int8", "onnx-int8-static", "trimmed", "trimmed-onnx-int8")

# ---------------------------------------------------------------------------------------------
# the recipe


def compress(run_dir: str | Path, opts: CompressOptions | None = None) -> dict[str, Any]:
    """Build, measure and choose; returns compression.json's content."""
    env.setup()
    import torch

    from tailorml.predictors import load_predictor

    opts = opts or CompressOptions()
    if folder_family(run_dir) == CAUSAL_LM:  # a generation run: its own path, below
        return compress_generation(run_dir, opts)
    if folder_family(run_dir) == IMAGE_CLASSIFIER:  # an image run: ONNX fp32 and int8, below
        return compress_images(run_dir, opts)
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
    ref_test = _test_logits(inp, ref_pred)
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
            **_test_entry(inp, ref_test, ref_test),
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
                    build_torch_int8(inp.model_dir, tmp, info)
                elif name in ("onnx-fp32", "onnx-int8"):
                    src = onnx_fp32(inp.model_dir, work, onnx_cache, ev, notes)
                    publish_onnx(name, src, tmp, inp.model_dir, info, int8=name == "onnx-int8")
                elif name == "onnx-int8-static":
                    src = onnx_fp32(inp.model_dir, work, onnx_cache, ev, notes)
                    publish_onnx_static(inp, src, tmp, info, notes)
                elif name == "pruned":
                    build_pruned(inp, work, tmp, opts, notes)
                elif name == "distilled":
                    build_distilled(inp, work, tmp, opts, notes)
                elif name == "trimmed":
                    build_trimmed(inp, tmp, opts, notes)
                elif name in TRIMMED:  # <pruned|distilled>-trimmed-onnx-int8
                    source = trimmed_source(inp, out / DEPENDS[name], work, opts, notes)
                    src = onnx_fp32(source, work, onnx_cache, ev, notes)
                    publish_onnx(name, src, tmp, source, info, int8=True)
                else:  # combinations: <source>-onnx-int8
                    source = out / DEPENDS[name]
                    src = onnx_fp32(source, work, onnx_cache, ev, notes)
                    publish_onnx(name, src, tmp, source, info, int8=True)
                pred = load_predictor(tmp, threads=opts.threads)
                logits = all_logits(pred, ev.texts, ev.pairs)
                par = inp.parity(ref_logits, logits)
                if DEPENDS.get(name) == "trimmed":  # the trimming's numbers, with its export's
                    notes = {**entries["trimmed"]["notes"], **notes}
                entry = _entry(name, pred, tmp, inp.quality(logits), par, notes)
                entry.update(_test_entry(inp, ref_test, _test_logits(inp, pred)))
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
    fronts = {
        "latency": pareto_front(variants, "latency_ms_b1_p50"),
        "size": pareto_front(variants, "size_bytes"),
    }
    for e in variants:
        e["chosen"] = e["name"] == chosen
        e["pareto_latency"] = e["name"] in fronts["latency"]
        e["pareto_size"] = e["name"] in fronts["size"]
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
        "test_examples": len(inp.test) if inp.test is not None else None,
        "test_source": inp.test.source if inp.test is not None else None,
        "pareto": fronts,
        "tolerances": {
            "onnx_export_max_abs_logit_diff": EXPORT_ATOL,
            "int8_min_agreement": INT8_MIN_AGREEMENT,
            "int8_agreement_applies_to": list(PARITY_RULED),
            "test_rule": f"test drop - {TEST_Z:g} * SE <= budget",
        },
        "machine": machine(),
        "cpu_flags": env.speed_flags(),
        "int8_kernels": env.int8_kernels(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "variants": variants,
    }
    write_outputs(run, result)
    print_table(result)
    return result


# ---------------------------------------------------------------------------------------------
# a generation run (a causal LM)


def compress_generation(run_dir: str | Path, opts: CompressOptions) -> dict[str, Any]:
    """Compress a generation run: the fp32 reference and torch-int8, each scored for perplexity
    on the eval answers and timed in greedy tokens/s at batch 1 and 8; the fastest at batch 8
    within the perplexity budget is chosen. Every folder loads with `Generator.load`.

        check input -> fp32 perplexity -> build each variant in a temp folder, load it the way
        it is served, its perplexity -> publish -> time all, interleaved -> choose
        -> RUN_DIR/compression.json, compression_summary.json, compression.md
    """
    import torch

    from tailorml.compress import generation as gen_c
    from tailorml.predictors.generator import Generator

    inp = gen_c.check_inputs(run_dir, opts)
    run, out = inp.run, inp.run / "compressed"
    torch.set_num_threads(opts.threads)
    steps = len(inp.variants) + 2
    console.print(
        f"[bold]Compressing[/] the generation run {run}: {', '.join(inp.variants)} "
        f"({len(inp.chats)} eval rows for perplexity, {len(inp.prompts)} prompts x "
        f"{opts.new_tokens} tokens timed, {opts.threads} thread(s), budget "
        f"+{opts.max_ppl_increase:g}% perplexity)"
    )

    _step(1, steps, REFERENCE, "perplexity of the fp32 model (the reference)")
    gens = {REFERENCE: Generator.load(inp.model_dir)}
    entries: dict[str, dict[str, Any]] = {
        REFERENCE: {
            "name": REFERENCE,
            "path": "model",
            "runtime": "torch",
            "size_bytes": folder_size(inp.model_dir),
            **gen_c.perplexity(gens[REFERENCE], inp.chats, inp.max_length),
            "notes": {},
        }
    }
    ref = entries[REFERENCE]
    console.print(f"  fp32 perplexity {ref['perplexity']:.4f}", highlight=False)
    for i, name in enumerate(inp.variants, start=2):
        _step(i, steps, name, gen_c.DESCRIBE[name])
        t0 = time.perf_counter()
        final = out / name
        with staged(final) as tmp:
            notes = gen_c.build_causal_int8(name, inp.model_dir, tmp, inp.info)
            gen = Generator.load(tmp)  # the loader every reader and `tailor serve` uses
            entry = {
                "name": name,
                "path": f"compressed/{name}",
                "runtime": "torch",
                "size_bytes": folder_size(tmp),
                **gen_c.perplexity(gen, inp.chats, inp.max_length),
                "notes": notes,
                "build_s": round(time.perf_counter() - t0, 1),
            }
        gen.folder = final  # the files it was loaded from, renamed into place
        gens[name], entries[name] = gen, entry
        rise = ppl_increase(ref["perplexity"], entry["perplexity"])
        console.print(
            f"  [green]done[/] {name}: {entry['size_bytes'] / 1e6:.1f} MB, perplexity "
            f"{entry['perplexity']:.4f} ({rise:+.2f}%), {entry['build_s']:.0f}s",
            highlight=False,
        )

    _step(steps, steps, "timing", f"greedy tokens/s at batch 1 and 8, {opts.repeats} repetitions")
    torch.set_num_threads(opts.threads)
    timings = gen_c.time_generators(
        gens,
        inp.prompts,
        opts.new_tokens,
        opts.repeats,
        report=lambda line: console.print(line, highlight=False),
    )
    for name, e in entries.items():
        e.update(timings[name])
        e["ppl_increase_pct"] = ppl_increase(ref["perplexity"], e["perplexity"])
        e["speedup_b1"] = round(e["tokens_per_s_b1"] / ref["tokens_per_s_b1"], 3)
        e["speedup_b8"] = round(e["tokens_per_s_b8"] / ref["tokens_per_s_b8"], 3)
        e["size_ratio"] = round(ref["size_bytes"] / e["size_bytes"], 3)
    variants = list(entries.values())
    chosen, message = choose_by_perplexity(variants, opts.max_ppl_increase)
    for e in variants:
        e["chosen"] = e["name"] == chosen
    result = {
        "run_dir": str(run),
        "family": CAUSAL_LM,
        "max_ppl_increase_pct": opts.max_ppl_increase,
        "chosen": chosen,
        "chosen_path": str(run / "model" if chosen == REFERENCE else out / chosen),
        "message": message,
        "threads": opts.threads,
        "repeats": opts.repeats,
        "prompts": len(inp.prompts),
        "new_tokens": opts.new_tokens,
        "eval_rows": len(inp.chats),
        "eval_tokens": ref["tokens"],
        "eval_source": inp.chats.source,
        "machine": machine(),
        "cpu_flags": env.speed_flags(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "variants": variants,
    }
    from tailorml.compress.report import GEN_COLUMNS, write_generation_markdown

    atomic_json(run / "compression.json", variants)
    atomic_json(
        run / "compression_summary.json", {k: v for k, v in result.items() if k != "variants"}
    )
    write_generation_markdown(run / "compression.md", result)
    print_table(result, GEN_COLUMNS, serve="generate")
    return result


# ---------------------------------------------------------------------------------------------
# an image run (a convolutional network)


def compress_images(run_dir: str | Path, opts: CompressOptions) -> dict[str, Any]:
    """Compress an image run: ONNX fp32 and ONNX int8 (static), each scored on the run's eval
    and test images (or --data as both), compared with fp32 and timed at batch 1 and 64; the
    fastest at batch 1 within the accuracy budget (on eval) is chosen."""
    import numpy as np

    from tailorml.compress import images as img_c
    from tailorml.errors import ConfigError
    from tailorml.evaluate.images import read_labeled
    from tailorml.models.images import load_image_classifier
    from tailorml.predictors.images import load_image_predictor
    from tailorml.tasks.folder import resolve_model_dir, variant_task_json

    model_dir = resolve_model_dir(run_dir)
    run = model_dir.parent
    names = opts.variants or list(img_c.IMAGE_VARIANTS)
    unknown = sorted(set(names) - set(img_c.IMAGE_VARIANTS))
    if unknown:
        raise ConfigError(
            f"--variants {unknown}: an image run has the variants {list(img_c.IMAGE_VARIANTS)}."
        )
    ref = load_image_predictor(model_dir, opts.threads)
    xs, ys = img_c.run_splits(run, opts.threads)
    if opts.data is not None:
        images, labels = read_labeled(ref, opts.data)
        xs["eval"] = xs["test"] = images.x
        ys["eval"] = ys["test"] = labels
    console.print(
        f"[bold]Compressing[/] the image run {run}: {', '.join(names)} ({len(xs['eval'])} eval, "
        f"{len(xs['test'])} test images, {opts.threads} thread(s), budget {opts.budget:g} points)"
    )
    preds: dict[str, Any] = {REFERENCE: ref}
    xs_scored = ("eval", "test")
    ref_logits = {s: ref.predict(xs[s]) for s in xs_scored}
    for name in names:
        t0 = time.perf_counter()
        with staged(run / "compressed" / name) as tmp:
            onnx_path = tmp / "model.onnx"
            shape = ref.shape
            if name == "onnx-fp32":
                img_c.export_image_onnx(load_image_classifier(model_dir), shape, onnx_path)
            else:
                fp32 = tmp / "fp32.onnx"
                img_c.export_image_onnx(load_image_classifier(model_dir), shape, fp32)
                img_c.quantize_image_onnx(fp32, onnx_path, ref.pixels(xs["train"][:512]))
                fp32.unlink()
            info = variant_task_json(
                ref.info, runtime="onnxruntime", onnx_file="model.onnx", variant=name
            )
            atomic_json(tmp / "task.json", info)
        preds[name] = load_image_predictor(run / "compressed" / name, opts.threads)
        console.print(f"  built {name} in {time.perf_counter() - t0:.1f}s", highlight=False)
    sample = latency_texts(list(xs["test"]), opts.latency_texts)  # the same for every variant
    timings = _time_all({n: img_c.AsTexts(p) for n, p in preds.items()}, sample, opts.repeats)
    entries = []
    for name, pred in preds.items():
        logits = ref_logits if name == REFERENCE else {s: pred.predict(xs[s]) for s in xs_scored}
        e = {
            "name": name,
            "path": "model" if name == REFERENCE else f"compressed/{name}",
            "runtime": pred.runtime,
            "size_bytes": folder_size(pred.folder),
            **timings[name],
            **img_c.split_stats(ref.heads[0], logits, ref_logits, ys),
            "agreement": float((logits["eval"].argmax(-1) == ref_logits["eval"].argmax(-1)).mean()),
            "max_abs_logit_diff": float(np.abs(logits["eval"] - ref_logits["eval"]).max()),
            "notes": {"built": img_c.DESCRIBE.get(name, "the PyTorch model (reference)")},
        }
        e["parity_passed"] = name != "onnx-int8" or e["agreement"] >= INT8_MIN_AGREEMENT
        entries.append(e)
        if name != REFERENCE:
            parity = {k: e[k] for k in ("agreement", "max_abs_logit_diff", "parity_passed")}
            parity.update(variant=name, reference=str(model_dir), inputs="the eval images")
            atomic_json(Path(pred.folder) / "parity.json", parity)
    base = entries[0]
    for e in entries:
        e["accuracy_drop_points"] = accuracy_drop(base["accuracy"], e["accuracy"])
        e["speedup_b1"] = round(base["latency_ms_b1_p50"] / e["latency_ms_b1_p50"], 3)
        e["speedup_b32"] = round(base["latency_ms_b32_p50"] / e["latency_ms_b32_p50"], 3)
        e["size_ratio"] = round(base["size_bytes"] / e["size_bytes"], 3)
        console.print(
            f"  {e['name']}: {e['size_bytes'] / 1e6:.2f} MB, eval accuracy {e['accuracy']:.4f}, "
            f"test {e['test_accuracy']:.4f}, agreement {e['agreement']:.4f}, batch-1 "
            f"{e['latency_ms_b1_p50']:.2f} ms",
            highlight=False,
        )
    ok = [e for e in entries if e["parity_passed"] and e["accuracy_drop_points"] <= opts.budget]
    best = min(ok, key=lambda e: e["latency_ms_b1_p50"])  # fp32 itself is always within budget
    fronts = {
        "latency": pareto_front(entries, "latency_ms_b1_p50"),
        "size": pareto_front(entries, "size_bytes"),
    }
    for e in entries:
        e["chosen"] = e is best
        e["pareto_latency"] = e["name"] in fronts["latency"]
        e["pareto_size"] = e["name"] in fronts["size"]
    result = {
        "run_dir": str(run),
        "family": IMAGE_CLASSIFIER,
        "budget_points": opts.budget,
        "chosen": best["name"],
        "chosen_path": str(run / best["path"]),
        "message": f"Chosen: {best['name']}, the fastest at batch 1 within {opts.budget:g} "
        "points of fp32's eval accuracy.",
        "threads": opts.threads,
        "repeats": opts.repeats,
        "eval_examples": len(xs["eval"]),
        "test_examples": len(xs["test"]),
        "latency_texts": len(sample),
        "pareto": fronts,
        "machine": machine(),
        "cpu_flags": env.speed_flags(),
        "int8_kernels": env.int8_kernels(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "tolerances": {
            "onnx-int8": f"agreement >= {INT8_MIN_AGREEMENT:g} with fp32 on eval to be eligible"
        },
        "variants": entries,
    }
    write_outputs(run, result)
    print_table(result)
    return result


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
    if name in PARITY_RULED:
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


TEST_KEYS = (
    "test_accuracy",
    "test_accuracy_se",
    "test_macro_f1",
    "test_accuracy_drop_points",
    "test_drop_se_points",
    "test_agreement",
)


def _test_logits(inp: Any, pred: Any) -> Any:
    """Logits on the test split (None without one)."""
    return None if inp.test is None else all_logits(pred, inp.test.texts, inp.test.pairs)


def _test_entry(inp: Any, ref: Any, got: Any) -> dict[str, Any]:
    """Accuracy on the test split with its standard error, the drop against fp32 with the
    standard error of the paired difference (what select's test rule reads), and agreement."""
    import numpy as np

    if got is None:  # no test split (--data): the keys are there, empty
        return dict.fromkeys(TEST_KEYS)
    q = inp.quality(got, "test")
    diffs = [
        r.astype(np.float64) - c.astype(np.float64)
        for r, c in zip(inp.correct(ref), inp.correct(got), strict=True)
    ]
    var = sum(float(d.var(ddof=1)) / len(d) if len(d) > 1 else 0.0 for d in diffs)
    ref_acc = inp.quality(ref, "test")["accuracy"]
    return {
        "test_accuracy": q["accuracy"],
        "test_accuracy_se": q["accuracy_se"],
        "test_macro_f1": q["macro_f1"],
        "test_accuracy_drop_points": accuracy_drop(ref_acc, q["accuracy"]),
        "test_drop_se_points": round(100 * var**0.5 / len(diffs), 4),
        "test_agreement": round(
            min(
                h.kind.agreement(ref[r, h.columns], got[r, h.columns], h) for h, r in inp.test_heads
            ),
            6,
        ),
    }


def _parity_doc(name: str, par: dict[str, float], entry: dict[str, Any], run: Path) -> dict:
    if name == "onnx-fp32":
        tol = f"max_abs_logit_diff <= {EXPORT_ATOL:g} against the PyTorch source (checked)"
    elif name in PARITY_RULED:
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
        med = Timing(
            float(np.median([t.b1_p50 for t in ts])),
            float(np.median([t.b1_p99 for t in ts])),
            float(np.median([t.b32_p50 for t in ts])),
            float(np.median([t.b32_p99 for t in ts])),
            float(np.median([t.throughput for t in ts])),
        )
        # with the spread over repetitions, by which the selector judges speed ties
        spread = [round(min(t.b1_p50 for t in ts), 3), round(max(t.b1_p50 for t in ts), 3)]
        out[name] = {**med.as_dict(), "latency_ms_b1_range": spread}
    return out


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
