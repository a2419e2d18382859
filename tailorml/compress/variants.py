"""How each variant of `tailor compress` is built into its (temporary) folder: PyTorch dynamic int8,
ONNX export (checked against PyTorch) and ONNX Runtime int8, structured pruning and a shallower
student — both retrained by a `tailor finetune` stage in a child process (tailorml/launch.py), on
the run's own config with the reshaped model as its base."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tailorml.compress.folders import copy_tokenizer, write_task
from tailorml.compress.inputs import RunInputs
from tailorml.config.compress import CompressOptions
from tailorml.data.examples import Examples
from tailorml.errors import ConfigError, TailorError
from tailorml.files import atomic_json
from tailorml.train.progress import console

# Stated tolerance: an fp32 ONNX export must reproduce its PyTorch source; a larger drift is an
# exporter bug and stops the command.
EXPORT_ATOL = 1e-3


class ParityError(TailorError):
    """An exported model's outputs drift from its PyTorch source past the stated tolerance."""


DESCRIBE = {
    "torch-int8": "PyTorch dynamic int8 of the Linear layers",
    "onnx-fp32": "ONNX export + ONNX Runtime graph fusions",
    "onnx-int8": "ONNX Runtime dynamic int8",
    "onnx-int8-static": "ONNX Runtime static int8 (activation ranges calibrated on training texts)",
    "pruned": "remove attention heads and FFN neurons, then a recovery fine-tune",
    "distilled": "a shallower student trained on the teacher's soft labels",
    "pruned-onnx-int8": "the pruned model as ONNX Runtime int8",
    "distilled-onnx-int8": "the distilled student as ONNX Runtime int8",
    "trimmed": "keep the vocabulary the training texts use (tokenizer and embedding rows)",
    "trimmed-onnx-int8": "the vocabulary-trimmed model as ONNX Runtime int8",
    "pruned-trimmed-onnx-int8": "the pruned model, vocabulary-trimmed, as ONNX Runtime int8",
    "distilled-trimmed-onnx-int8": "the distilled student, vocabulary-trimmed, as ONNX Runtime "
    "int8",
}


def build_torch_int8(model_dir: Path, tmp: Path, info: dict[str, Any]) -> None:
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


def onnx_fp32(
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


def publish_onnx(
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


# Training texts whose activations set the static int8 ranges (a seeded sample), per batch.
CALIBRATION_TEXTS = 256
CALIBRATION_BATCH = 16


def publish_onnx_static(
    inp: RunInputs, fused: Path, tmp: Path, info: dict[str, Any], notes: dict[str, Any]
) -> None:
    """Static int8 of the run's model: the unfused export beside `fused` (the verified fp32
    graph), calibrated on a seeded sample of the training texts (never eval or test)."""
    import numpy as np
    import onnx
    from transformers import AutoTokenizer

    from tailorml.compress.inputs import train_texts
    from tailorml.compress.onnx_export import STATIC_OPS, quantize_onnx_static

    raw = fused.parent / "raw.onnx"
    names = {i.name for i in onnx.load(str(raw), load_external_data=False).graph.input}
    texts, pairs = train_texts(inp)
    rng = np.random.default_rng(0)
    rows = sorted(rng.choice(len(texts), min(CALIBRATION_TEXTS, len(texts)), replace=False))
    tok = AutoTokenizer.from_pretrained(str(inp.model_dir))
    feeds = []
    for i in range(0, len(rows), CALIBRATION_BATCH):
        part = rows[i : i + CALIBRATION_BATCH]
        enc = tok(
            [texts[r] for r in part],
            [pairs[r] for r in part] if pairs is not None else None,
            padding=True,
            truncation=True,
            max_length=inp.model.max_length,
            return_tensors="np",
        )
        feeds.append({k: v.astype(np.int64) for k, v in enc.items() if k in names})
    quantize_onnx_static(raw, tmp / "model.onnx", feeds)
    notes["calibration"] = {
        "texts": len(rows),
        "source": "training split (seeded sample)",
        "method": "min-max",
        "ops": list(STATIC_OPS),
        "weights": "int8 per channel",
        "activations": "uint8 per tensor",
    }
    copy_tokenizer(inp.model_dir, tmp)
    write_task(
        tmp,
        info,
        runtime="onnxruntime",
        onnx_file="model.onnx",
        variant="onnx-int8-static",
        precision="int8",
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
    # The reshaped model (saved merged) is retrained in full: it is small, and its folder must
    # stand alone like every variant's.
    raw["model"]["lora"] = None
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
    name: str,
    epochs: float,
    opts: CompressOptions,
    distill: dict[str, Any] | None = None,
) -> Path:
    """Fine-tune a reshaped model (pruned, or a student) on the run's own data: a `tailor
    finetune` stage in a child process, on the run's config with the reshaped model as base (and
    the run's model as teacher for a student); returns that run's folder."""
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
    return run_dir


def _finish_trained(run_dir: Path, tmp: Path, info: dict[str, Any], name: str) -> None:
    import json

    model = run_dir / "model"
    for p in model.iterdir():
        if p.is_file() and p.name != "task.json":
            shutil.copy2(p, tmp / p.name)
    write_task(tmp, info, runtime="torch", variant=name)
    ev = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    atomic_json(tmp / "training.json", {k: ev[k] for k in ("train",) if k in ev})


def build_pruned(
    inp: RunInputs, work: Path, tmp: Path, opts: CompressOptions, notes: dict[str, Any]
) -> None:
    """Remove heads and FFN neurons by importance, then recover; with `prune_steps` > 1 in
    steps (prune a little, recover, recompute importance on the recovered model, repeat)."""
    from tailorml.compress import prune
    from tailorml.models.classifier import load_classifier

    model = load_classifier(inp.model_dir)
    before = prune.count_params(model)
    head_f, ffn_f = opts.prune_heads, opts.prune_ffn
    if opts.prune_target_params is not None:
        head_f = ffn_f = prune.fraction_for_params(model, opts.prune_target_params)
    layer = prune.encoder_layers(model)[0]
    n_heads = layer.attention.self.query.out_features // prune._head_size(model)
    steps = opts.prune_steps
    plan = zip(
        prune.schedule(n_heads, head_f, steps),
        prune.schedule(layer.intermediate.dense.out_features, ffn_f, steps),
        strict=True,
    )
    batches = _train_batches(inp)
    epochs = opts.recovery_epochs / steps
    log = []
    for i, (keep_h, keep_n) in enumerate(plan, start=1):
        heads, neurons = prune.importance(model, batches)
        prune.apply(model, prune.plan(heads, neurons, head_f, ffn_f, keep=(keep_h, keep_n)))
        params = prune.count_params(model)
        console.print(
            f"  pruned{f' step {i}/{steps}' if steps > 1 else ''}: {before / 1e6:.2f}M -> "
            f"{params / 1e6:.2f}M parameters (heads per layer {keep_h}, FFN per layer {keep_n}); "
            f"recovery fine-tune, {epochs:g} epoch(s):",
            highlight=False,
        )
        run_dir = _retrain(inp, model, work, f"pruned-{i}", epochs, opts)
        log.append({"step": i, "heads_per_layer": keep_h, "ffn_per_layer": keep_n})
        log[-1].update(params=params, **_recovery_eval(run_dir))
        model = load_classifier(run_dir / "model")
    _finish_trained(run_dir, tmp, inp.info, "pruned")
    notes.update(
        params_before=before,
        params=prune.count_params(model),
        heads_per_layer=model.config.tailorml_heads_per_layer,
        ffn_per_layer=model.config.tailorml_ffn_per_layer,
        recovery_epochs=opts.recovery_epochs,
        steps=log,
    )


def _recovery_eval(run_dir: Path) -> dict[str, Any]:
    """The recovery fine-tune's own eval accuracy (eval.json), when it wrote one."""
    import json

    path = run_dir / "eval.json"
    ev = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    acc = (ev.get("eval") or {}).get("accuracy")
    return {"eval_accuracy": acc} if isinstance(acc, int | float) else {}


def build_distilled(
    inp: RunInputs, work: Path, tmp: Path, opts: CompressOptions, notes: dict[str, Any]
) -> None:
    from tailorml.compress.distill import make_student
    from tailorml.compress.prune import count_params, encoder_layers
    from tailorml.models.classifier import load_classifier

    teacher = load_classifier(inp.model_dir)
    n_teacher = len(encoder_layers(teacher))
    k = opts.student_layers or max(1, n_teacher // 3)
    student = make_student(teacher, k)
    console.print(
        f"  student: {k} of {n_teacher} layers (teacher layers "
        f"{student.config.tailorml_student_of_layers}), {count_params(student) / 1e6:.2f}M "
        f"parameters; distillation, {opts.distill_epochs:g} epoch(s), loss weights: soft labels "
        f"{opts.distill_alpha:g}, hidden states {opts.distill_hidden_weight:g}, attention maps "
        f"{opts.distill_attention_weight:g}:"
    )
    loss = {
        "temperature": opts.distill_temperature,
        "alpha": opts.distill_alpha,
        "hidden_weight": opts.distill_hidden_weight,
        "attention_weight": opts.distill_attention_weight,
    }
    teacher_of = {"teacher": str(inp.model_dir.resolve()), **loss}
    run_dir = _retrain(inp, student, work, "distilled", opts.distill_epochs, opts, teacher_of)
    _finish_trained(run_dir, tmp, inp.info, "distilled")
    notes.update(
        layers=k,
        teacher_layers=student.config.tailorml_student_of_layers,
        params=count_params(student),
        epochs=opts.distill_epochs,
        **loss,
    )


def trim_vocab(
    inp: RunInputs, source: Path, dst: Path, opts: CompressOptions, notes: dict[str, Any]
) -> None:
    """Vocabulary-trim model folder `source` into `dst` (tailorml/compress/vocab.py), with the
    held-out numbers: tokens that become [UNK] and texts whose tokens change, on the eval and
    test splits (neither is among the texts the vocabulary was taken from)."""
    from tailorml.compress import vocab
    from tailorml.compress.inputs import train_texts

    texts, pairs = train_texts(inp)
    counts = vocab.trim_folder(source, dst, texts, pairs, opts.vocab_margin)
    held = {"eval": vocab.heldout_stats(source, dst, inp.eval.texts, inp.eval.pairs)}
    if inp.test is not None:
        held["test"] = vocab.heldout_stats(source, dst, inp.test.texts, inp.test.pairs)
    notes["vocab"] = {**counts, "margin_ids": opts.vocab_margin, "train_texts": len(texts), **held}
    console.print(
        f"  vocabulary {counts['base']} -> {counts['kept']} tokens ({counts['used_by_train']} "
        f"used by {len(texts)} training texts); held-out "
        + ", ".join(
            f"{k}: {h['unk_tokens']} [UNK] of {h['tokens']} tokens ({h['unk_tokens_base']} "
            f"before), {h['texts_changed_share']:.1%} of texts tokenized differently"
            for k, h in held.items()
        ),
        highlight=False,
    )


def build_trimmed(inp: RunInputs, tmp: Path, opts: CompressOptions, notes: dict[str, Any]) -> None:
    """The run's model with its vocabulary trimmed, on PyTorch; its parity against the
    untrimmed model on the test split goes into `notes` (the recipe measures eval for all)."""
    trim_vocab(inp, inp.model_dir, tmp, opts, notes)
    write_task(tmp, inp.info, runtime="torch", variant="trimmed")


def trimmed_source(
    inp: RunInputs, source: Path, work: Path, opts: CompressOptions, notes: dict[str, Any]
) -> Path:
    """A vocabulary-trimmed copy of `source` (a built torch variant) in `work`, to export."""
    from tailorml.tasks.folder import write_task_json

    dst = work / f"trim-{source.name}"
    if dst.exists():
        shutil.rmtree(dst)
    trim_vocab(inp, source, dst, opts, notes)
    write_task_json(dst, inp.info)
    return dst
