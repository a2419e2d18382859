"""`tailor compress` on a generation run (a causal LM): the int8 variant folders, what is
measured (size, greedy tokens/s at batch 1 and 8, perplexity and its change), the choice under
a perplexity budget, loading through `Generator.load` / `tailor generate`, and the refusals.

A tiny random Llama on the SmolLM2 tokenizer, trained a few steps (tests/test_generation.py's
toy data); the real SmolLM2 figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tailorml.cli import app
from tailorml.compress.select import choose_by_perplexity, ppl_increase
from tailorml.config.compress import GENERATION_VARIANTS, CompressOptions
from tailorml.errors import ConfigError

from .test_generation import _cfg, _config

FAST = {"repeats": 1, "prompts": 2, "new_tokens": 4, "threads": 1}


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generation run (hidden 32, 2 layers, 4 steps), not compressed."""
    from tailorml.recipes.sft import sft

    tmp = tmp_path_factory.mktemp("gen-compress")
    raw = _config(
        tmp,
        model={"tiny_hidden_size": 32},
        train={"max_steps": 4, "eval_every_steps": 4, "log_every_steps": 4},
        generate={"samples": 0},
    )
    sft(_cfg(raw))
    shutil.rmtree(tmp / "run" / "checkpoints")
    return tmp / "run"


@pytest.fixture(scope="module")
def compressed(gen_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from tailorml.recipes.compress import compress

    run = tmp_path_factory.mktemp("compressed") / "run"
    shutil.copytree(gen_run, run)
    result = compress(run, CompressOptions(max_ppl_increase=50.0, **FAST))  # type: ignore[arg-type]
    return run, result


def test_every_variant_is_a_folder_that_generator_load_runs(compressed: tuple[Path, dict]) -> None:
    from tailorml.models.causal_lm import load_causal_lm
    from tailorml.predictors.generator import Generator

    run, _ = compressed
    for name in GENERATION_VARIANTS:
        folder = run / "compressed" / name
        for f in ("model_int8.pt", "config.json", "tokenizer.json", "generation_config.json"):
            assert (folder / f).is_file(), (name, f)
        assert not (folder / "model.safetensors").exists()  # int8 weights only
        assert not list(run.joinpath("compressed").glob(".*"))  # no temp folder left
        info = json.loads((folder / "task.json").read_text())
        assert info["family"] == "causal-lm" and info["variant"] == name
        gen = Generator.load(folder)
        quantized = torch.ao.nn.quantized.dynamic.Linear
        kinds = {n: type(m) for n, m in gen.model.named_modules()}
        # int8 Linear layers, the output layer kept fp32; mixed keeps the down projections too.
        assert kinds["lm_head"] is torch.nn.Linear
        assert kinds["model.layers.0.self_attn.q_proj"] is quantized
        down = kinds["model.layers.0.mlp.down_proj"]
        assert down is (torch.nn.Linear if name == "torch-int8-mixed" else quantized)
        [out] = gen.generate(["What do bees make?"], max_new_tokens=6, min_new_tokens=6)
        assert out.tokens == 6 and out.output  # text, from int8 weights
        # The other loader gives the same model: same logits on the same ids.
        other = load_causal_lm(folder).eval()
        ids = torch.tensor([[1, 2, 3, 4, 5]])
        with torch.inference_mode():
            torch.testing.assert_close(other(ids).logits, gen.model(ids).logits)


def test_compression_json_has_the_measured_figures(compressed: tuple[Path, dict]) -> None:
    run, result = compressed
    variants = json.loads((run / "compression.json").read_text())
    assert [v["name"] for v in variants] == ["fp32", *GENERATION_VARIANTS]
    ref = variants[0]
    # fp32 perplexity is the run's own eval perplexity (same split, same answer tokens).
    run_eval = json.loads((run / "eval.json").read_text())["eval"]
    assert ref["perplexity"] == pytest.approx(run_eval["perplexity"], rel=1e-4)
    assert ref["tokens"] == run_eval["tokens"]
    for v in variants:
        assert v["tokens_per_s_b1"] > 0 and v["tokens_per_s_b8"] > 0
        assert 1 < v["perplexity"] < 1e6 and v["size_bytes"] > 0
        assert v["ppl_increase_pct"] == pytest.approx(
            (v["perplexity"] / ref["perplexity"] - 1) * 100, abs=1e-3
        )
        assert v["speedup_b8"] == pytest.approx(
            v["tokens_per_s_b8"] / ref["tokens_per_s_b8"], abs=1e-3
        )
        assert isinstance(v["sample_output"], str)
    sizes = {v["name"]: v["size_bytes"] for v in variants}
    assert sizes["torch-int8"] < sizes["torch-int8-mixed"] < sizes["fp32"]
    assert sum(v["chosen"] for v in variants) == 1
    summary = json.loads((run / "compression_summary.json").read_text())
    assert summary["chosen"] == result["chosen"] and summary["new_tokens"] == 4
    assert summary["prompts"] == 2 and summary["max_ppl_increase_pct"] == 50.0
    md = (run / "compression.md").read_text()
    assert "| variant | chosen | size MB | tok/s b1 | tok/s b8 | perplexity |" in md
    assert all(f"| {n} |" in md for n in sizes) and result["message"] in md


def test_the_choice_respects_the_perplexity_budget(compressed: tuple[Path, dict]) -> None:
    """On the measured figures: the chosen variant is within budget and faster than fp32; a
    budget just under a variant's measured rise excludes it."""
    run, result = compressed
    variants = result["variants"]
    ref = variants[0]
    chosen = next(v for v in variants if v["chosen"])
    if chosen["name"] != "fp32":
        assert chosen["ppl_increase_pct"] <= 50.0
        assert chosen["tokens_per_s_b8"] > ref["tokens_per_s_b8"]
    int8 = variants[1]
    rise = ppl_increase(ref["perplexity"], int8["perplexity"])
    others = [v for v in variants if v["name"] not in ("fp32", "torch-int8")]
    name, _ = choose_by_perplexity([ref, int8, *others], rise - 1e-3)
    assert name != "torch-int8"
    faster = {**int8, "tokens_per_s_b8": ref["tokens_per_s_b8"] * 2}
    assert choose_by_perplexity([ref, faster], rise + 1e-3)[0] == "torch-int8"
    assert choose_by_perplexity([ref, faster], max(rise - 1e-3, 0))[0] == (
        "torch-int8" if rise <= 0 else "fp32"
    )


def test_selector_rules_on_hand_made_figures() -> None:
    ref = {"name": "fp32", "perplexity": 10.0, "tokens_per_s_b8": 30.0}
    a = {"name": "a", "perplexity": 10.4, "tokens_per_s_b8": 60.0}  # +4%
    b = {"name": "b", "perplexity": 11.0, "tokens_per_s_b8": 90.0}  # +10%
    slow = {"name": "slow", "perplexity": 10.0, "tokens_per_s_b8": 20.0}
    assert choose_by_perplexity([ref, a, b], 5.0)[0] == "a"
    assert choose_by_perplexity([ref, a, b], 10.0)[0] == "b"
    name, msg = choose_by_perplexity([ref, a, b], 0.0)
    assert name == "fp32" and "a: +4.00%" in msg and "--max-ppl-increase" in msg
    name, msg = choose_by_perplexity([ref, slow], 5.0)
    assert name == "fp32" and "faster" in msg


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(1.0, 100.0), st.floats(0.1, 100.0)), min_size=1, max_size=5),
    st.floats(0.0, 50.0),
)
def test_selector_never_chooses_over_budget_or_slower(
    figures: list[tuple[float, float]], budget: float
) -> None:
    ref = {"name": "fp32", "perplexity": 10.0, "tokens_per_s_b8": 30.0}
    vs = [
        {"name": f"v{i}", "perplexity": p, "tokens_per_s_b8": t} for i, (p, t) in enumerate(figures)
    ]
    name, _ = choose_by_perplexity([ref, *vs], budget)
    if name != "fp32":
        v = next(x for x in vs if x["name"] == name)
        assert ppl_increase(10.0, v["perplexity"]) <= budget and v["tokens_per_s_b8"] > 30.0
        fits = [x for x in vs if ppl_increase(10.0, x["perplexity"]) <= budget]
        assert v["tokens_per_s_b8"] == max(x["tokens_per_s_b8"] for x in fits)


def test_classifier_only_variants_and_options_are_refused(gen_run: Path, tmp_path: Path) -> None:
    from tailorml.recipes.compress import compress

    run = tmp_path / "run"
    shutil.copytree(gen_run, run)
    for variants, words in (
        (["onnx-int8"], ["onnx-int8 is for classifier runs only"]),
        (["pruned", "distilled"], ["pruned, distilled are for classifier runs only"]),
        (["torch-int8", "int4"], ["unknown variant(s): 'int4'"]),
    ):
        with pytest.raises(ConfigError) as err:
            compress(run, CompressOptions(variants=variants))
        msg = str(err.value)
        assert all(w in msg for w in words), msg
        assert "supports: torch-int8, torch-int8-mixed" in msg
    with pytest.raises(ConfigError, match=r"--budget: is an option of classifier runs"):
        compress(run, CompressOptions(budget=0.5))
    assert not (run / "compressed").exists() and not (run / "compression.json").exists()


def test_cli_generate_on_the_int8_folder_and_bad_options(compressed: tuple[Path, dict]) -> None:
    run, _ = compressed
    runner = CliRunner()
    folder = run / "compressed" / "torch-int8"
    res = runner.invoke(app, ["generate", str(folder), "-p", "hi", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["input"] == "hi" and row["tokens"] >= 1
    res = runner.invoke(app, ["compress", str(run), "--max-ppl-increase", "-1"])
    assert res.exit_code == 2 and "--max-ppl-increase" in res.output, res.output
    res = runner.invoke(app, ["compress", str(run), "--variants", "onnx-fp32"])
    assert res.exit_code == 2 and "supports: torch-int8" in res.output, res.output


def test_the_int8_file_is_never_unpickled(compressed: tuple[Path, dict], tmp_path: Path) -> None:
    """A model_int8.pt holding a pickled object (not tensors) is refused with the fix."""
    from tailorml.predictors.generator import Generator

    run, _ = compressed
    folder = tmp_path / "int8"
    shutil.copytree(run / "compressed" / "torch-int8", folder)
    torch.save({"x": _Evil()}, str(folder / "model_int8.pt"))
    with pytest.raises(ConfigError, match="Re-run `tailor compress`"):
        Generator.load(folder)
    assert not _Evil.ran


class _Evil:
    ran = False

    def __reduce__(self) -> Any:
        return (_Evil._run, ())

    @staticmethod
    def _run() -> None:
        _Evil.ran = True


def test_an_int8_variant_is_served(compressed: tuple[Path, dict]) -> None:
    """`tailor serve` on RUN/compressed/torch-int8: the int8 model answers /v1/generate with the
    text `Generator.load` gives, and /v1/models names the variant."""
    import httpx

    from tailorml.predictors.generator import Generator

    from .serve_helpers import ThreadServer

    gen = Generator.load(compressed[0] / "compressed" / "torch-int8")
    want = gen.generate(["What do bees make?"], max_new_tokens=6, batch_size=1)[0].output
    with ThreadServer(gen) as srv:
        r = httpx.post(
            srv.url + "/v1/generate",
            json={"prompt": "What do bees make?", "max_new_tokens": 6},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["output"] == want, r.text
        card = httpx.get(srv.url + "/v1/models", timeout=10).json()["models"][0]
    assert card["variant"] == "torch-int8" and card["version"].startswith("sha256:")
    assert card["name"] == compressed[0].name
