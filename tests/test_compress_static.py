"""Static int8 (`onnx-int8-static`): calibrated on training texts only, quantizes the matrix
products and embedding lookups, and stays a servable folder close to fp32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tailorml.compress import onnx_export
from tailorml.compress.measure import all_logits
from tailorml.config.compress import CompressOptions
from tailorml.errors import ConfigError
from tailorml.predictors import load_predictor
from tailorml.recipes.compress import compress

from .conftest import make_rows
from .test_compress import FAST, run, trained_run  # noqa: F401  (fixtures)


def test_static_int8_calibrates_on_training_texts_and_stays_close(
    run: Path,  # noqa: F811
    monkeypatch: Any,
) -> None:
    seen: list[dict[str, Any]] = []
    real = onnx_export.quantize_onnx_static

    def spy(src: Path, dst: Path, feeds: list[dict[str, Any]]) -> None:
        seen.extend(feeds)
        real(src, dst, feeds)

    monkeypatch.setattr(onnx_export, "quantize_onnx_static", spy)
    result = compress(run, CompressOptions(variants=["onnx-int8-static", "onnx-int8"], **FAST))  # type: ignore[arg-type]
    by = {v["name"]: v for v in result["variants"]}
    assert list(by) == ["fp32", "onnx-int8", "onnx-int8-static"]
    for v in by.values():  # each variant's spread over the timed repetitions (ties: select.py)
        low, high = v["latency_ms_b1_range"]
        assert 0 < low <= v["latency_ms_b1_p50"] <= high

    # Every calibration row is a training text (tokenized), none is an eval or test text.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(run / "model"))
    rows = {
        tuple(int(t) for t in ids if t != tok.pad_token_id)
        for feed in seen
        for ids in feed["input_ids"]
    }

    def ids_of(texts: list[str]) -> set[tuple[int, ...]]:
        enc = tok(texts, truncation=True, max_length=32)["input_ids"]
        return {tuple(e) for e in enc}

    train = ids_of([r["text"] for r in make_rows(240, 0)])
    held = ids_of([r["text"] for r in make_rows(60, 1) + make_rows(60, 2)])
    assert len(rows) > 100 and rows <= train and not rows & held
    notes = by["onnx-int8-static"]["notes"]["calibration"]
    assert notes["texts"] == 240 and notes["ops"] == ["MatMul", "Gather"]

    # The graph: int8 MatMul weights behind QDQ pairs; LayerNorm and Softmax stay float.
    folder = run / "compressed" / "onnx-int8-static"
    graph = onnx.load(str(folder / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("DequantizeLinear") >= 8 and "QuantizeLinear" in ops
    quantized_inputs = {i for n in graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    for n in graph.node:
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert not set(n.input) & quantized_inputs, n.name
    info = json.loads((folder / "task.json").read_text())
    assert info["runtime"] == "onnxruntime" and info["precision"] == "int8"
    assert by["onnx-int8-static"]["size_bytes"] < 0.6 * by["fp32"]["size_bytes"]

    # Served through the one loader; its logits stay near fp32's on eval texts.
    texts = [r["text"] for r in make_rows(60, 1)]
    got = all_logits(load_predictor(folder, threads=1), texts)
    want = all_logits(load_predictor(run / "model", threads=1), texts)
    assert np.abs(got - want).max() < 0.5
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def test_static_int8_needs_the_training_texts(run: Path) -> None:  # noqa: F811
    (run / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="no config.yaml.*onnx-int8-static"):
        compress(run, CompressOptions(variants=["onnx-int8-static"], data=run / "x.csv"))
    with pytest.raises(ConfigError, match="calibration texts"):
        onnx_export.quantize_onnx_static(run / "a.onnx", run / "b.onnx", [])
