"""Vocabulary trimming, test-split reporting and the Pareto fronts of `tailor compress`, on the
tiny model (which borrows the packaged encoder's 30,522-token WordPiece vocabulary)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailorml.compress import vocab
from tailorml.compress.measure import all_logits
from tailorml.compress.select import TEST_Z, choose, holds_on_test, pareto_front
from tailorml.config.compress import CompressOptions
from tailorml.errors import ConfigError
from tailorml.models.base import packaged_minilm_path
from tailorml.predictors import load_predictor
from tailorml.recipes.compress import TEST_KEYS, compress

from .conftest import make_rows
from .test_compress import FAST, run, trained_run  # noqa: F401  (fixtures)

BASE = Path(packaged_minilm_path())


def _tokens(doc: dict[str, Any], text: str) -> list[str]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(doc))
    tok.no_padding()
    return list(tok.encode(text).tokens)


# ---- the tokenizer rewrite ---------------------------------------------------------------------


def test_trimmed_tokenizer_keeps_seen_text_and_renumbers() -> None:
    doc = vocab.load_tokenizer_doc(BASE)
    seen = ["peabody shares rally after the earnings beat", "$AAPL upgrade 🚀"]
    keep, counts = vocab.kept_ids(doc, seen, None, margin=0)
    assert counts["base"] == 30522 and counts["kept"] == len(keep) < 2100
    assert keep == sorted(set(keep)) and {0, 100, 101, 102, 103} <= set(keep)
    trimmed = vocab.trim_tokenizer_doc(doc, keep)
    v = trimmed["model"]["vocab"]
    assert sorted(v.values()) == list(range(len(keep)))
    # Renumbered in the old order; the specials follow (the post-processor's [CLS]/[SEP] too).
    assert v["[PAD]"] == 0 and v["[CLS]"] == keep.index(101) and v["[SEP]"] == keep.index(102)
    assert trimmed["post_processor"]["special_tokens"]["[CLS]"]["ids"] == [v["[CLS]"]]
    assert {t["content"]: t["id"] for t in trimmed["added_tokens"]}["[UNK]"] == v["[UNK]"]
    # A text whose pieces were all kept tokenizes exactly as before (strings; ids renumbered).
    for text in seen:
        assert _tokens(trimmed, text) == _tokens(doc, text)
    # A word whose pieces were dropped splits into kept ones (single characters are kept),
    # never into [UNK]; a character the base vocabulary lacks is [UNK] in both.
    assert _tokens(doc, "blaine") == ["[CLS]", "blaine", "[SEP]"]
    assert _tokens(trimmed, "blaine")[1:-1] == ["b", "##l", "##a", "##i", "##n", "##e"]
    assert "[UNK]" in _tokens(doc, "🚀") and "[UNK]" in _tokens(trimmed, "🚀")
    # The margin keeps the first ids of the base vocabulary ("the" is 1996), not [unusedN].
    keep2, counts2 = vocab.kept_ids(doc, seen, None, margin=2100)
    assert 1996 in keep2 and 2099 in keep2 and counts2["margin"] == 2100 - 994
    assert not any(doc["model"]["vocab"]["[unused5]"] == i for i in keep2)


def test_only_wordpiece_tokenizers_are_trimmed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a fast tokenizer"):
        vocab.load_tokenizer_doc(tmp_path)
    doc = vocab.load_tokenizer_doc(BASE)
    doc["model"]["type"] = "BPE"
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="supports WordPiece tokenizers.*BPE"):
        vocab.load_tokenizer_doc(tmp_path)


def test_trimmed_folder_gives_the_same_logits_on_training_text(
    trained_run: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The trimmed model (embedding rows gathered, tokenizer rewritten) is the untrimmed one on
    the texts its vocabulary came from; AutoTokenizer and tailorml's encoder agree on it; the
    held-out counts are right."""
    from transformers import AutoTokenizer

    from tailorml.tasks.folder import write_task_json

    src = trained_run / "model"
    train = [r["text"] for r in make_rows(240, 0)]
    dst = tmp_path / "trimmed"
    counts = vocab.trim_folder(src, dst, train, None, margin=0)
    write_task_json(dst, json.loads((src / "task.json").read_text()))
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["vocab_size"] == counts["kept"] < 2100
    assert cfg["tailorml_trimmed_vocab"] == {"kept": counts["kept"], "base": 30522}
    lines = (dst / "vocab.txt").read_text().splitlines()
    assert len(lines) == counts["kept"] and lines[0] == "[PAD]"
    a, b = load_predictor(src, threads=1), load_predictor(dst, threads=1)
    want, got = all_logits(a, train), all_logits(b, train)
    assert np.abs(want - got).max() <= 1e-5
    assert (dst / "model.safetensors").stat().st_size < 0.2 * (src / "model.safetensors").stat(
    ).st_size  # fmt: skip
    held = ["peabody blaine shares 🚀", "the company said"]
    ids, _ = b.encoder.encode(held)
    auto = AutoTokenizer.from_pretrained(str(dst))(held, truncation=True, max_length=32)
    assert auto["input_ids"] == ids
    stats = vocab.heldout_stats(src, dst, held, None)
    assert stats["texts"] == 2 and stats["texts_changed"] == 1
    assert stats["unk_tokens"] == stats["unk_tokens_base"] == 1
    base = vocab.load_tokenizer_doc(src)
    assert stats["tokens"] == sum(len(_tokens(base, t)) for t in held)


# ---- selection: the test rule, and the Pareto fronts --------------------------------------------


def _v(name: str, acc: float, ms: float, test_drop: float | None = None, se: float = 0.5) -> dict:
    v: dict[str, Any] = {
        "name": name,
        "accuracy": acc,
        "latency_ms_b1_p50": ms,
        "size_bytes": int(ms * 1e6),
        "parity_passed": True,
    }
    if test_drop is not None:
        v.update(test_accuracy_drop_points=test_drop, test_drop_se_points=se)
    return v


def test_selector_prefers_the_variant_whose_test_accuracy_holds() -> None:
    vs = [
        _v("fp32", 0.90, 10.0, 0.0, 0.0),
        _v("fast", 0.899, 2.0, test_drop=3.0, se=0.5),  # eval fits; test 3 ± 0.5 pts: no
        _v("slower", 0.897, 4.0, test_drop=1.5, se=0.5),  # test 1.5 - 2 * 0.5 <= 1: holds
    ]
    name, msg = choose(vs, 1.0)
    assert name == "slower", msg
    assert "on the test split 1.50 ± 0.50 points" in msg
    assert "Not chosen because test did not hold: fast" in msg
    # The rule's edge: drop - TEST_Z * SE == budget holds; a hair more does not.
    assert holds_on_test(_v("x", 0, 1, test_drop=1.0 + TEST_Z * 0.25, se=0.25), 1.0)
    assert not holds_on_test(_v("x", 0, 1, test_drop=1.01 + TEST_Z * 0.25, se=0.25), 1.0)
    assert holds_on_test(_v("x", 0, 1), 0.0)  # no test split: the rule is skipped
    # Test never admits what eval rejected, and when nothing holds fp32 is kept with the reason.
    name, msg = choose([vs[0], _v("a", 0.88, 1.0, test_drop=0.0), vs[1]], 1.0)
    assert name == "fp32" and "fast: its eval accuracy did not hold on the test split" in msg
    assert "Raise --budget" in msg


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1.0), st.floats(0.01, 100.0), st.floats(-5, 5), st.floats(0, 2)),
        max_size=8,
    ),
    st.floats(0.0, 3.0),
)
def test_chosen_variant_always_holds_on_test_and_is_fastest_that_does(
    variants: list[tuple[float, float, float, float]], budget: float
) -> None:
    vs = [_v("fp32", 0.9, 10.0, 0.0, 0.0)] + [
        _v(f"v{i}", acc, ms, drop, se) for i, (acc, ms, drop, se) in enumerate(variants)
    ]
    name, _ = choose(vs, budget)
    ok = [
        v
        for v in vs[1:]
        if round((0.9 - v["accuracy"]) * 100, 4) <= budget and holds_on_test(v, budget)
    ]
    if name != "fp32":
        chosen = next(v for v in vs if v["name"] == name)
        assert chosen in ok
        assert chosen["latency_ms_b1_p50"] == min(v["latency_ms_b1_p50"] for v in ok)
    else:
        assert not [v for v in ok if v["latency_ms_b1_p50"] < 10.0]


def test_pareto_front() -> None:
    vs = [
        _v("fp32", 0.90, 10.0),
        _v("a", 0.90, 4.0),  # as accurate, faster: beats fp32
        _v("b", 0.88, 2.0),
        _v("c", 0.87, 3.0),  # slower and less accurate than b
        _v("d", 0.88, 2.0),  # ties b: neither beats the other
    ]
    assert pareto_front(vs, "latency_ms_b1_p50") == ["b", "d", "a"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 6)), min_size=1, max_size=10))
def test_pareto_front_is_exactly_the_undominated(points: list[tuple[int, int]]) -> None:
    vs = [_v(f"v{i}", a / 10, float(c)) for i, (a, c) in enumerate(points)]
    front = set(pareto_front(vs, "size_bytes"))

    def beats(w: dict, v: dict) -> bool:
        ge = w["accuracy"] >= v["accuracy"] and w["size_bytes"] <= v["size_bytes"]
        return ge and (w["accuracy"], w["size_bytes"]) != (v["accuracy"], v["size_bytes"])

    for v in vs:
        assert (v["name"] in front) == (not any(beats(w, v) for w in vs))


# ---- the whole command ---------------------------------------------------------------------------


def test_compress_trimmed_variants_with_test_split_and_fronts(run: Path) -> None:  # noqa: F811
    opts = CompressOptions(variants=["trimmed-onnx-int8", "onnx-int8"], vocab_margin=0, **FAST)  # type: ignore[arg-type]
    result = compress(run, opts)
    by = {v["name"]: v for v in result["variants"]}
    assert list(by) == ["fp32", "onnx-int8", "trimmed", "trimmed-onnx-int8"]
    assert result["test_examples"] == 60 and result["eval_examples"] == 60
    # Standard errors: sqrt(p(1-p)/n) of each accuracy, on eval and test.
    for v in by.values():
        for acc, se in (("accuracy", "accuracy_se"), ("test_accuracy", "test_accuracy_se")):
            p = v[acc]
            assert v[se] == pytest.approx(math.sqrt(p * (1 - p) / 60), abs=1e-6), v["name"]
        assert 0 <= v["test_agreement"] <= 1 and v["test_drop_se_points"] >= 0
    assert by["fp32"]["test_accuracy_drop_points"] == 0.0
    # The trimmed model is the untrimmed one on its training texts; the held-out numbers are
    # reported for eval and test; its int8 export is smaller than onnx-int8.
    notes = by["trimmed"]["notes"]["vocab"]
    assert notes["kept"] < 2100 and notes["base"] == 30522 and notes["train_texts"] == 240
    assert set(notes["test"]) >= {"unk_tokens", "unk_tokens_base", "texts_changed_share"}
    assert by["trimmed-onnx-int8"]["notes"]["vocab"] == notes
    assert by["trimmed"]["size_bytes"] < 0.5 * by["fp32"]["size_bytes"]
    assert by["trimmed-onnx-int8"]["size_bytes"] < 0.6 * by["onnx-int8"]["size_bytes"]
    assert by["trimmed"]["parity_passed"] == (by["trimmed"]["agreement"] >= 0.95)
    train = [r["text"] for r in make_rows(240, 0)]
    ref = all_logits(load_predictor(run / "model", threads=1), train)
    got = all_logits(load_predictor(run / "compressed" / "trimmed", threads=1), train)
    assert np.abs(ref - got).max() <= 1e-5
    # Every variant's Pareto membership agrees with the fronts; the report shows both.
    for key, cost in (("latency", "latency_ms_b1_p50"), ("size", "size_bytes")):
        assert result["pareto"][key] == pareto_front(result["variants"], cost)
        assert {n for n, v in by.items() if v[f"pareto_{key}"]} == set(result["pareto"][key])
    md = (run / "compression.md").read_text()
    assert "Pareto fronts" in md and "accuracy vs batch-1 latency:" in md
    assert "test acc ± se" in md and f"{by['fp32']['test_accuracy']:.4f} ±" in md
    assert (run / "compression.png").stat().st_size > 10000
    saved = json.loads((run / "compression.json").read_text())
    assert [v["test_accuracy"] for v in saved] == [v["test_accuracy"] for v in by.values()]
    parity = json.loads((run / "compressed" / "trimmed-onnx-int8" / "parity.json").read_text())
    assert "agreement >= 0.95" in parity["tolerance"]


def test_without_a_test_split_the_test_fields_are_empty(run: Path) -> None:  # noqa: F811
    """--data gives the eval rows and no test split: the test keys are there, null, and the
    choice is eval's alone."""
    from .conftest import write_csv

    data = write_csv(run / "given.csv", make_rows(45, 7))
    result = compress(run, CompressOptions(variants=["onnx-int8"], data=data, **FAST))  # type: ignore[arg-type]
    assert result["test_examples"] is None and result["eval_examples"] == 45
    for v in json.loads((run / "compression.json").read_text()):
        assert {k: v[k] for k in TEST_KEYS} == dict.fromkeys(TEST_KEYS), v["name"]
    assert "test split" not in result["message"]
    assert "`test acc` on the test split" not in (run / "compression.md").read_text()


def test_trimming_refused_without_training_text(run: Path) -> None:  # noqa: F811
    (run / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="no config.yaml.*trimmed"):
        compress(run, CompressOptions(variants=["trimmed-onnx-int8"], data=run / "x.csv"))
