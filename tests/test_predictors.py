"""The predictor's own tokenization (the `tokenizers` library, no torch) gives exactly what
transformers' tokenizer gives for `truncation=True, max_length=N`."""

from __future__ import annotations

import pytest

from tailorml.predictors.encoder import TextEncoder

TEXTS = [
    "Fed signals more rate hikes, stocks slide",
    "$TSLA recalls 2M cars 🚗 — shares −3.5%",
    "Ünïcödé àccents and CJK 東京 mixed in",
    "a " * 200,  # longer than max_length: truncated
    "x",
]
PAIRS = ["short answer", "a much longer second text " * 10, "é", "b", "the other side"]


@pytest.mark.parametrize("max_length", [8, 32, 128])
def test_encoder_matches_transformers_tokenizer(max_length: int) -> None:
    from transformers import AutoTokenizer

    from tailorml.models.base import packaged_minilm_path

    folder = packaged_minilm_path()
    ours = TextEncoder(folder, max_length)
    ref = AutoTokenizer.from_pretrained(str(folder))
    for pairs in (None, PAIRS):
        ids, types = ours.encode(TEXTS, pairs)
        want = ref(TEXTS, pairs, truncation=True, max_length=max_length)
        assert ids == want["input_ids"]
        assert types == want["token_type_ids"]
    assert ours.pad_id == ref.pad_token_id
    full = ours.untruncated_lengths(TEXTS)
    assert full == [len(x) for x in ref(TEXTS)["input_ids"]]
    assert max(full) > 128  # the long text really was truncated above
