"""`tailor compress` on tiny models: exporter parity, pruning, distillation, the budget selector,
servable variant folders, and bad input that leaves nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tailorml.compress import prune
from tailorml.compress.distill import DistillLoss, make_student, student_layers
from tailorml.compress.onnx_export import attention_shape, export_onnx, optimize_onnx
from tailorml.compress.select import accuracy_drop, choose
from tailorml.compress.variants import EXPORT_ATOL, ParityError
from tailorml.config.compress import VARIANTS, CompressOptions
from tailorml.config.load import validate_mapping
from tailorml.errors import ConfigError, DataError
from tailorml.predictors import load_predictor
from tailorml.recipes.compress import compress
from tailorml.recipes.finetune import finetune

from .conftest import REPO, make_rows, tiny_config, write_csv

CLI = [sys.executable, "-m", "tailorml.cli"]
FAST = {"repeats": 1, "latency_texts": 40, "recovery_epochs": 1, "distill_epochs": 2}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny fine-tuned run (2 heads of 16 dims, 2 layers) shared by the tests (copied)."""
    tmp = tmp_path_factory.mktemp("trained")
    data = {
        k: str(write_csv(tmp / f"{k}.csv", make_rows(n, seed)))
        for k, n, seed in (("train", 240, 0), ("eval", 60, 1), ("test", 60, 2))
    }
    raw = tiny_config(tmp, data=data, model={"base": "tiny", "dropout": 0.0, "tiny_layers": 2})
    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    finetune(cfg)
    return Path(cfg.output_dir)


@pytest.fixture()
def run(trained_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    return dst


def tiny_model(heads: int = 4, hidden: int = 32, layers: int = 2) -> Any:
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        num_labels=3,
    )
    return AutoModelForSequenceClassification.from_config(cfg, attn_implementation="sdpa").eval()


def tokenizer() -> Any:
    from tailorml.models.base import load_tokenizer

    return load_tokenizer(None)


def random_batch(n: int = 8, seq: int = 24, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random ids with random padding lengths: parity must hold on padded batches."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (n, seq), generator=g)
    lengths = torch.randint(3, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def run_onnx(path: Path, batch: dict[str, torch.Tensor]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    feed = {k: v.numpy() for k, v in batch.items() if k in names}
    return np.asarray(sess.run(["logits"], feed)[0])


# ---- exporter parity (stated tolerances) -------------------------------------------------------


def test_onnx_export_parity_on_random_padded_inputs(tmp_path: Path) -> None:
    """fp32 ONNX (exported, then fused) matches PyTorch within 1e-4 on random padded inputs;
    int8 stays within 0.25 of the logits and the graph has dynamic batch and sequence axes."""
    import onnx

    from tailorml.compress.onnx_export import quantize_onnx

    model = tiny_model()
    export_onnx(model, tokenizer(), tmp_path / "raw.onnx")
    fused = optimize_onnx(tmp_path / "raw.onnx", tmp_path / "fp32.onnx", *attention_shape(model))
    assert fused.get("Attention") == 2 and fused.get("SkipLayerNormalization") == 4, fused
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    dims = onnx.load(str(tmp_path / "raw.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]
    for n, seq in ((1, 5), (8, 24), (3, 40)):
        batch = random_batch(n, seq, seed=n)
        with torch.inference_mode():
            want = model(**batch).logits.numpy()
        for name, atol in (("raw.onnx", 1e-4), ("fp32.onnx", 1e-4), ("int8.onnx", 0.25)):
            got = run_onnx(tmp_path / name, batch)
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= atol, (name, n, seq, np.abs(got - want).max())


def test_torch_int8_parity(tmp_path: Path) -> None:
    """PyTorch dynamic int8 stays within 0.25 of the fp32 logits on random padded inputs."""
    from tailorml.predictors.torch_runtime import quantize_linear as _quantize_linear

    model = tiny_model()
    q = _quantize_linear(tiny_model())
    batch = random_batch()
    with torch.inference_mode():
        diff = (model(**batch).logits - q(**batch).logits).abs().max().item()
    assert 0 < diff <= 0.25, diff


# ---- pruning and distillation ------------------------------------------------------------------


def test_pruning_removes_heads_and_neurons_and_stays_loadable(tmp_path: Path) -> None:
    from tailorml.models.classifier import load_classifier

    model = tiny_model(heads=4, hidden=32)
    before = prune.count_params(model)
    encoder_before = sum(p.numel() for p in model.bert.encoder.parameters())
    batch = {**random_batch(), "labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}
    heads, neurons = prune.importance(model, [batch])
    assert [h.shape[0] for h in heads] == [4, 4] and [n.shape[0] for n in neurons] == [64, 64]
    plan = prune.plan(heads, neurons, head_fraction=0.5, ffn_fraction=0.5)
    # The most important head of each layer is kept.
    for h, kept in zip(heads, plan.heads_kept, strict=True):
        assert int(h.argmax()) in kept and len(kept) == 2
    prune.apply(model, plan)
    layer = model.bert.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (16, 32)  # 2 heads x 8 dims
    assert layer.attention.output.dense.weight.shape == (32, 16)
    assert layer.intermediate.dense.weight.shape == (32, 32)
    encoder_after = sum(p.numel() for p in model.bert.encoder.parameters())
    assert prune.count_params(model) < before
    assert encoder_after < 0.6 * encoder_before, (encoder_after, encoder_before)
    batch.pop("labels")
    with torch.inference_mode():
        want = model(**batch).logits
    model.save_pretrained(str(tmp_path / "p"))
    back = load_classifier(tmp_path / "p")
    with torch.inference_mode():
        assert torch.allclose(back(**batch).logits, want, atol=1e-6)
    # The pruned model exports and fuses (2 heads per layer) with the same outputs.
    export_onnx(back, tokenizer(), tmp_path / "p.onnx")
    fused = optimize_onnx(tmp_path / "p.onnx", tmp_path / "po.onnx", *attention_shape(back))
    assert fused.get("Attention") == 2, fused
    got = run_onnx(tmp_path / "po.onnx", batch)
    assert np.abs(got - want.numpy()).max() <= 1e-4


def test_student_keeps_evenly_spaced_teacher_layers() -> None:
    assert student_layers(6, 3) == [1, 3, 5]
    assert student_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert student_layers(2, 1) == [1]
    with pytest.raises(ConfigError, match="from 1 to 5"):
        student_layers(6, 6)
    teacher = tiny_model(layers=4)
    student = make_student(teacher, 2)
    assert len(student.bert.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    assert torch.equal(
        student.bert.encoder.layer[1].output.dense.weight,
        teacher.bert.encoder.layer[3].output.dense.weight,
    )
    assert len(teacher.bert.encoder.layer) == 4  # the teacher is untouched


def test_distill_loss_mixes_soft_and_gold_labels() -> None:
    teacher = tiny_model()
    batch = random_batch(4)
    labels = torch.tensor([0, 1, 2, 1])
    idx = np.arange(4)
    logits = torch.randn(4, 3)
    hard_only = DistillLoss(teacher, alpha=0.0)(logits, labels, batch, idx)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(hard_only, ce)
    soft = DistillLoss(teacher, temperature=2.0, alpha=1.0)
    with torch.inference_mode():
        t_logits = teacher(**batch).logits
    assert torch.allclose(soft(t_logits.clone(), labels, batch, idx), torch.zeros(4), atol=1e-5)
    assert (soft(logits, labels, batch, idx) > 0).all()
    assert len(soft._cache) == 4  # teacher logits are cached per training example


# ---- the budget selector ------------------------------------------------------------------------


def _v(name: str, acc: float, ms: float, ok: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "accuracy": acc,
        "latency_ms_b1_p50": ms,
        "parity_passed": ok,
        "agreement": 1.0 if ok else 0.9,
    }


def test_selector_picks_fastest_within_budget_and_falls_back() -> None:
    vs = [
        _v("fp32", 0.90, 10.0),
        _v("a", 0.895, 4.0),  # 0.5 points: fits 1.0
        _v("b", 0.880, 1.0),  # 2 points: over budget
        _v("c", 0.899, 3.0, ok=False),  # fast and accurate but drifted
    ]
    assert choose(vs, 1.0)[0] == "a"
    assert choose(vs, 2.0)[0] == "b"
    name, msg = choose(vs, 0.1)
    assert name == "fp32"
    assert "No compressed variant stays within the accuracy budget of 0.1 points" in msg
    assert "smallest drop" in msg and "Keeping the fp32 model" in msg
    # Each variant's rule is named: the drifted one is excluded by parity, not by the budget.
    assert "c: agreement with fp32 0.900 is below the parity threshold" in msg, msg
    assert "b: accuracy drop 2.00 points is over the budget of 0.1" in msg, msg
    assert choose([_v("fp32", 0.9, 1.0), _v("a", 0.9, 2.0)], 1.0)[0] == "fp32"
    # Only parity failures: raising the budget is not the advice.
    name, msg = choose([_v("fp32", 0.9, 9.0), _v("c", 0.9, 1.0, ok=False)], 5.0)
    assert name == "fp32" and "Raising --budget would not help" in msg, msg


def test_selector_prefers_the_smaller_of_equally_fast_variants() -> None:
    def timed(name: str, acc: float, reps: list[float], mb: float) -> dict[str, Any]:
        v = _v(name, acc, float(np.median(reps)))
        return {**v, "latency_ms_b1_range": [min(reps), max(reps)], "size_bytes": mb * 1e6}

    ref = timed("fp32", 0.9241, [12.9, 14.9, 14.6], 91.7)
    # Banking77, 2026-12-04: the same student with and without a trimmed vocabulary, timed
    # 1.06/1.05/1.49 and 1.05/1.50/1.46 ms: one speed, two sizes.
    full = timed("distilled-onnx-int8", 0.9151, [1.06, 1.05, 1.49], 16.4)
    trim = timed("distilled-trimmed-onnx-int8", 0.9141, [1.05, 1.50, 1.46], 10.2)
    name, msg = choose([ref, full, trim], 1.0)
    assert name == "distilled-trimmed-onnx-int8", msg
    assert "as fast as distilled-onnx-int8 within the timing spread" in msg
    assert "1.6x smaller" in msg
    # Really slower (its best repetition never reached the fastest one's median): no tie.
    slow = timed("small-but-slow", 0.92, [1.30, 1.35, 1.40], 5.0)
    assert choose([ref, full, slow], 1.0)[0] == "distilled-onnx-int8"
    # Over budget or test-rejected variants never win a tie.
    assert choose([ref, full, {**trim, "accuracy": 0.9100}], 1.0)[0] == "distilled-onnx-int8"
    # One repetition: only equal times tie.
    one = [_v("fp32", 0.9, 10.0), _v("a", 0.9, 2.0), _v("b", 0.9, 2.01)]
    one = [{**v, "size_bytes": mb} for v, mb in zip(one, (9, 5, 1), strict=True)]
    assert choose(one, 1.0)[0] == "a"
    assert choose([one[0], one[1], {**one[2], "latency_ms_b1_p50": 2.0}], 1.0)[0] == "b"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1.0), st.floats(0.01, 100.0), st.booleans()),
        min_size=0,
        max_size=8,
    ),
    st.floats(0.0, 1.0),
    st.floats(0.0, 5.0),
)
def test_selector_never_chooses_over_budget(
    variants: list[tuple[float, float, bool]], ref_acc: float, budget: float
) -> None:
    vs = [_v("fp32", ref_acc, 10.0)] + [
        _v(f"v{i}", acc, ms, ok) for i, (acc, ms, ok) in enumerate(variants)
    ]
    name, msg = choose(vs, budget)
    chosen = next(v for v in vs if v["name"] == name)
    assert name == "fp32" or (
        accuracy_drop(ref_acc, chosen["accuracy"]) <= budget and chosen["parity_passed"]
    )
    if name == "fp32":
        assert "Keeping the fp32 model" in msg
    else:
        fits = [
            v
            for v in vs[1:]
            if v["parity_passed"] and accuracy_drop(ref_acc, v["accuracy"]) <= budget
        ]
        assert chosen["latency_ms_b1_p50"] == min(v["latency_ms_b1_p50"] for v in fits)


# ---- the whole command --------------------------------------------------------------------------


@pytest.mark.slow  # every variant built and timed (~35 s); trimmed ones: test_compress_vocab
def test_compress_all_variants_end_to_end(run: Path) -> None:
    # Distilled with intermediate layers too: the fine-tuning stage hooks the student's layers.
    opts = CompressOptions(
        budget=1.0, prune_heads=0.5, distill_hidden_weight=1.0, distill_attention_weight=0.5, **FAST
    )  # type: ignore[arg-type]
    result = compress(run, opts)
    variants = json.loads((run / "compression.json").read_text())
    assert isinstance(variants, list)
    saved = {**json.loads((run / "compression_summary.json").read_text()), "variants": variants}
    assert saved["chosen"] == result["chosen"]
    names = [v["name"] for v in saved["variants"]]
    assert names == ["fp32", *VARIANTS]
    required = {
        "name",
        "size_bytes",
        "latency_ms_b1_p50",
        "latency_ms_b1_p99",
        "latency_ms_b32_p50",
        "accuracy",
        "macro_f1",
        "agreement",
        "chosen",
    }
    for v in saved["variants"]:
        assert required <= set(v), v["name"]
        assert v["latency_ms_b1_p50"] > 0 and v["latency_ms_b1_p99"] >= v["latency_ms_b1_p50"]
        assert v["throughput_per_s_b32"] > 0
    assert sum(v["chosen"] for v in saved["variants"]) == 1
    ref = saved["variants"][0]
    chosen = next(v for v in saved["variants"] if v["chosen"])
    assert accuracy_drop(ref["accuracy"], chosen["accuracy"]) <= 1.0
    by = {v["name"]: v for v in saved["variants"]}
    # int8 files are much smaller than fp32 (embeddings are quantized too).
    assert by["onnx-int8"]["size_bytes"] < 0.5 * by["onnx-fp32"]["size_bytes"]
    assert by["onnx-fp32"]["max_abs_logit_diff"] <= EXPORT_ATOL
    for name in ("onnx-fp32", "onnx-int8", "pruned-onnx-int8", "distilled-onnx-int8"):
        assert by[name]["notes"]["onnx_fusions"].get("Attention"), name
    assert by["pruned"]["notes"]["params"] < by["pruned"]["notes"]["params_before"]
    assert by["pruned"]["notes"]["heads_per_layer"] == [1, 1]
    assert by["distilled"]["notes"]["layers"] == 1
    assert by["distilled"]["notes"]["hidden_weight"] == 1.0
    assert by["distilled"]["notes"]["attention_weight"] == 0.5
    assert set(saved["int8_kernels"]) == {"torch", "onnxruntime"}
    assert (run / "compression.md").read_text().count("| onnx-int8 |") == 1
    assert "int8 kernels, onnxruntime: MLAS" in (run / "compression.md").read_text()
    assert (run / "compression.png").stat().st_size > 5000
    assert not (run / "compressed" / ".work").exists()

    # Every variant folder is servable on its own and scores like compression.json says.
    from tailorml.compress.measure import all_logits

    texts = [r["text"] for r in make_rows(60, 1)]
    for name in VARIANTS:
        folder = run / "compressed" / name
        par = json.loads((folder / "parity.json").read_text())
        assert par["variant"] == name and "tolerance" in par
        info = json.loads((folder / "task.json").read_text())
        assert info["labels"] == ["negative", "neutral", "positive"] and info["max_length"] == 32
        pred = load_predictor(folder, threads=1)
        logits = all_logits(pred, texts)
        acc = float((logits.argmax(1) == np.arange(60) % 3).mean())
        assert acc == pytest.approx(by[name]["accuracy"]), name
        if "onnx" in name:
            assert info["runtime"] == "onnxruntime" and pred.runtime == "onnxruntime"
            assert not list(folder.glob("*.safetensors")) and not list(folder.glob("*.pt"))


def test_onnx_variant_runs_without_torch_or_tailorml(run: Path) -> None:
    compress(run, CompressOptions(variants=["onnx-int8"], **FAST))  # type: ignore[arg-type]
    folder = run / "compressed" / "onnx-int8"
    script = f"""
import sys, json
sys.modules["torch"] = None  # any import of torch now fails
sys.modules["tailorml"] = None
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
folder = {str(folder)!r}
info = json.load(open(folder + "/task.json"))
tok = Tokenizer.from_file(folder + "/tokenizer.json")
enc = tok.encode("great strong rally today")
feed = {{"input_ids": np.array([enc.ids], dtype=np.int64),
        "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
        "token_type_ids": np.array([enc.type_ids], dtype=np.int64)}}
sess = ort.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
feed = {{k: v for k, v in feed.items() if k in {{i.name for i in sess.get_inputs()}}}}
logits = sess.run(["logits"], feed)[0]
print(info["labels"][int(logits.argmax())])
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "positive"


def test_compressed_folders_evaluate_predict_and_serve_through_one_loader(run: Path) -> None:
    """What `tailor compress` says to serve also evaluates and predicts (the same predictor),
    and tailorml's ONNX path (predictor + service) never imports torch or transformers."""
    compress(run, CompressOptions(variants=["onnx-int8", "torch-int8"], **FAST))  # type: ignore[arg-type]
    test_csv = yaml.safe_load((run / "config.yaml").read_text())["data"]["test"]
    from typer.testing import CliRunner

    from tailorml.cli import app

    runner = CliRunner()
    rows = [r.split(",") for r in Path(test_csv).read_text().splitlines()[1:]]
    gold = {"negative": 0, "neutral": 1, "positive": 2}
    texts = ["great strong rally today", "terrible crash and loss"]
    for variant in ("onnx-int8", "torch-int8"):
        folder = run / "compressed" / variant
        pred = load_predictor(folder, threads=1)
        want = float(
            np.mean(pred.predict([t for t, _ in rows]).argmax(1) == [gold[y] for _, y in rows])
        )
        res = runner.invoke(app, ["evaluate", str(folder), "--data", test_csv])
        assert res.exit_code == 0, res.output
        metrics = json.loads(res.stdout)
        assert metrics["n"] == 60 and metrics["runtime"] == pred.runtime, metrics
        assert metrics["accuracy"] == pytest.approx(want), (variant, metrics)
        out = folder.parent / f"{variant}.jsonl"
        res = runner.invoke(app, ["predict", str(folder), "--input", "-", "-o", str(out)],
                            input="\n".join(texts) + "\n")  # fmt: skip
        assert res.exit_code == 0, res.output
        labels = [json.loads(x)["label"] for x in out.read_text().splitlines()]
        assert labels == [p["label"] for p in pred.format(pred.predict(texts))], variant

    script = f"""
import sys
from starlette.testclient import TestClient
from tailorml.predictors import load_predictor
from tailorml.serve.app import create_app
from tailorml.serve.settings import ServeSettings
folder = {str(run / "compressed" / "onnx-int8")!r}
pred = load_predictor(folder, threads=1)
print(pred.format(pred.predict(["terrible crash and loss"]))[0]["label"])
with TestClient(create_app(ServeSettings(model=folder, threads=1))) as client:
    r = client.post("/v1/predict", json={{"inputs": ["terrible crash and loss"]}})
    print(r.json()["predictions"][0]["label"])
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    local, served, imported = res.stdout.split()
    assert local == served and local in gold and imported == "[]", res.stdout


# ---- bad input: clear errors, nothing half-written -----------------------------------------------


def test_bad_input_gets_clear_errors(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown variant.*'onnx-int4'.*did you mean 'onnx-int8'"):
        compress(run, CompressOptions(variants=["onnx-int4"]))
    with pytest.raises(ConfigError, match="is not a tailorml run folder"):
        compress(tmp_path, CompressOptions())
    with pytest.raises(ConfigError, match="does not exist"):
        compress(tmp_path / "nope", CompressOptions())
    (run / "config.yaml").unlink()
    with pytest.raises(DataError, match="has no eval data.*--data FILE"):
        compress(run, CompressOptions(variants=["onnx-int8"]))
    with pytest.raises(ConfigError, match="no config.yaml, so there is no training data"):
        compress(run, CompressOptions(variants=["distilled-onnx-int8"]))
    assert not (run / "compressed").exists() and not (run / "compression.json").exists()


def test_cli_errors_and_no_half_written_variant(run: Path, monkeypatch: Any) -> None:
    res = subprocess.run(
        [*CLI, "compress", str(run), "--variants", "torch-int8,bogus"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "Unknown variant" in res.stderr
    assert "Traceback" not in res.stderr
    res = subprocess.run(
        [*CLI, "compress", str(run.parent)], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 2 and "not a tailorml run folder" in res.stderr
    assert "Traceback" not in res.stderr

    # A drifting export fails loudly and leaves no variant folder behind.
    import tailorml.compress.variants as rc

    monkeypatch.setattr(rc, "EXPORT_ATOL", -1.0)
    with pytest.raises(ParityError, match="drifts from PyTorch"):
        compress(run, CompressOptions(variants=["onnx-fp32"], **FAST))  # type: ignore[arg-type]
    leftovers = [p.name for p in (run / "compressed").iterdir()]
    assert leftovers == [], leftovers

    # A crash in the middle of a build (here: the quantizer) leaves nothing half-written either.
    monkeypatch.setattr(rc, "EXPORT_ATOL", 1e-3)

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("tailorml.compress.onnx_export.quantize_onnx", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        compress(run, CompressOptions(variants=["onnx-fp32", "onnx-int8"], **FAST))  # type: ignore[arg-type]
    assert sorted(p.name for p in (run / "compressed").iterdir()) == ["onnx-fp32"]


@pytest.mark.slow
def test_real_minilm_export_quantize_and_prune(tmp_path: Path) -> None:
    """The packaged MiniLM: the fused fp32 export matches PyTorch, int8 is >= 3.5x smaller than
    the fp32 model folder, and pruning a quarter of the heads keeps attention fused."""
    from tailorml.config.load import load_config

    cfg = load_config(
        REPO / "configs" / "finsent.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "data.limit=300",
            "train.max_steps=20",
            "train.warmup_ratio=null",
            f"data.train={REPO / 'data/twitter_fin_sentiment/sent_train.csv'}",
            f"data.eval={REPO / 'data/twitter_fin_sentiment/sent_valid.csv'}",
        ],
    )
    finetune(cfg)
    run = tmp_path / "run"
    res = compress(
        run,
        CompressOptions(variants=["onnx-int8", "onnx-fp32"], repeats=1, latency_texts=32),
    )
    by = {v["name"]: v for v in res["variants"]}
    assert by["onnx-fp32"]["max_abs_logit_diff"] <= EXPORT_ATOL
    assert by["onnx-fp32"]["notes"]["onnx_fusions"]["Attention"] == 6
    assert by["fp32"]["size_bytes"] / by["onnx-int8"]["size_bytes"] >= 3.5

    from tailorml.models.classifier import load_classifier

    model = load_classifier(run / "model")
    heads = [torch.rand(12) for _ in range(6)]
    neurons = [torch.rand(1536) for _ in range(6)]
    prune.apply(model, prune.plan(heads, neurons, 0.25, 0.5))
    assert attention_shape(model) == (9, 288)
    export_onnx(model, tokenizer(), tmp_path / "p.onnx")
    fused = optimize_onnx(tmp_path / "p.onnx", tmp_path / "po.onnx", *attention_shape(model))
    assert fused.get("Attention") == 6, fused
    batch = random_batch(4, 20)
    with torch.inference_mode():
        want = model(**batch).logits.numpy()
    assert np.abs(run_onnx(tmp_path / "po.onnx", batch) - want).max() <= 1e-3
