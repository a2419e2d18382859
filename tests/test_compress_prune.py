"""Iterative pruning of `tailor compress` (prune a little, recover, repeat) and its parameter
target, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tailorml.compress import prune
from tailorml.config.compress import CompressOptions
from tailorml.errors import ConfigError
from tailorml.recipes.compress import compress

from .test_compress import FAST, random_batch, run, tiny_model, trained_run  # noqa: F401


def test_schedule_steps_down_to_the_one_shot_count() -> None:
    assert prune.schedule(12, 0.5, 1) == [6]
    assert prune.schedule(12, 0.5, 3) == [10, 8, 6]  # 12 * 0.5^(1/3) = 9.5, 12 * 0.5^(2/3) = 7.6
    assert prune.schedule(1536, 0.5, 2) == [1086, 768]
    assert prune.schedule(2, 0.9, 3) == [1, 1, 1]  # never below one


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4096), st.floats(0.0, 0.99), st.integers(1, 6))
def test_schedule_is_monotone_and_ends_where_one_shot_does(n: int, f: float, steps: int) -> None:
    counts = prune.schedule(n, f, steps)
    assert len(counts) == steps and counts[-1] == prune.kept_count(n, f)
    assert all(a >= b for a, b in zip([n, *counts], counts, strict=False))


def test_parameter_target_sets_the_shares_and_is_checked() -> None:
    model = tiny_model(heads=4, hidden=32)
    total, shrink = prune.count_params(model), prune.prunable_params(model)
    target = total - shrink // 2
    f = prune.fraction_for_params(model, target)
    assert f == pytest.approx(0.5, abs=1e-3)
    heads, neurons = prune.importance(
        model, [{**random_batch(), "labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}]
    )
    prune.apply(model, prune.plan(heads, neurons, f, f))
    # Whole heads and neurons: the count lands within one head and one neuron per layer.
    slack = 2 * (4 * 8 * 32 + 3 * 8 + 2 * 32 + 1)
    assert abs(prune.count_params(model) - target) <= slack
    with pytest.raises(ConfigError, match="--prune-target-params 10: .* give a number between"):
        prune.fraction_for_params(tiny_model(), 10)


@pytest.mark.slow  # three prune-and-recover rounds (~25 s); the schedule is tested above
def test_iterative_pruning_end_to_end(run: Path) -> None:  # noqa: F811
    """Two steps, each pruning and recovering; the second step's importance is computed on the
    recovered model of the first; the target parameter count is reached."""
    from tailorml.models.classifier import load_classifier

    model = load_classifier(run / "model")
    layer = prune.encoder_layers(model)[0]
    ffn = layer.intermediate.dense.out_features
    target = prune.count_params(model) - prune.prunable_params(model) * 3 // 4
    opts = CompressOptions(
        variants=["pruned"],
        prune_steps=2,
        prune_target_params=target,
        **FAST,  # type: ignore[arg-type]
    )
    result = compress(run, opts)
    notes = next(v for v in result["variants"] if v["name"] == "pruned")["notes"]
    steps = notes["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert [s["ffn_per_layer"] for s in steps] == prune.schedule(ffn, 0.75, 2)
    assert steps[0]["params"] > steps[1]["params"] == notes["params"]
    assert all(0 <= s["eval_accuracy"] <= 1 for s in steps)
    assert notes["ffn_per_layer"] == [prune.kept_count(ffn, 0.75)] * len(notes["ffn_per_layer"])
    assert notes["params"] < notes["params_before"]
    info = json.loads((run / "compressed" / "pruned" / "task.json").read_text())
    assert info["variant"] == "pruned"
