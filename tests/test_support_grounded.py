"""Grounded generated answers: a causal LM (the random `tiny` one) writes the retrieval answer
from the retrieved passages, the prompt numbers and cites them, and the sources always come
back with the reply, named in its text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tailorml.apps.support.assistant import Assistant
from tailorml.apps.support.config import load_support_config
from tailorml.apps.support.grounded import GroundedWriter, cite, grounded_messages
from tailorml.apps.support.retrieval import Hit
from tailorml.errors import ConfigError

from .test_support_assistant import support_config
from .test_support_service import KeywordModel, keyword_bot

PIN = Hit("pin_blocked", "pin_blocked#0", 3.0, "Blocked PIN", "Unblock it in the app settings.")
CARD = Hit("card_arrival", "card_arrival#0", 1.0, "Where is my card?", "Cards arrive in 5 days.")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny causal LM saved as a folder Generator.load reads."""
    import torch

    from tailorml.config.schema import ModelConfig
    from tailorml.models.causal_lm import build_causal_lm, load_causal_tokenizer

    folder = tmp_path_factory.mktemp("tiny_lm")
    tok = load_causal_tokenizer(None)
    torch.manual_seed(0)
    model = build_causal_lm(ModelConfig(base="tiny", tiny_hidden_size=32), [], tok).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_prompt_numbers_the_passages_and_carries_the_conversation() -> None:
    history = [{"message": "hi", "answer": "Hello, how can I help?"}]
    chat = grounded_messages("my pin is blocked", [PIN, CARD], history)
    system = chat[0]["content"]
    assert chat[0]["role"] == "system" and "only the help-centre passages" in system
    assert "[1] Blocked PIN (pin_blocked)\nUnblock it in the app settings." in system
    assert "[2] Where is my card? (card_arrival)" in system
    assert [m["role"] for m in chat[1:]] == ["user", "assistant", "user"]
    assert chat[-1]["content"] == "my pin is blocked"


def test_an_answer_citing_no_passage_gets_a_sources_line() -> None:
    assert cite("Unblock it in settings [1].", [PIN, CARD]) == "Unblock it in settings [1]."
    named = cite("Unblock it in settings.", [PIN, CARD])
    assert named.endswith("Sources: [1] Blocked PIN; [2] Where is my card?")
    assert cite("See [7].", [PIN]).endswith("Sources: [1] Blocked PIN")  # [7] cites nothing
    assert cite("  ", [PIN]) == "Sources: [1] Blocked PIN"


def test_tiny_causal_lm_writes_the_retrieval_answer_with_its_sources(tiny_lm: Path) -> None:
    writer = GroundedWriter.load({"run": str(tiny_lm), "max_new_tokens": 6})
    bot = keyword_bot()
    bot.writer = writer
    reply = bot.answer_many(
        ["my pin is blocked"], history=[[{"message": "hello", "answer": "Hi!"}]]
    )[0]
    assert reply["path"] == "retrieval" and not reply["handoff"]
    assert reply["sources"][0]["doc_id"] == "pin_blocked"
    # written by the model (not the passage copied), and it names the sources
    assert reply["answer"] != "If your PIN is blocked, unblock it in the app settings."
    assert "[1]" in reply["answer"]
    assert writer.last_prompt is not None
    assert "unblock it in the app settings" in writer.last_prompt[0]["content"]
    assert writer.last_prompt[1] == {"role": "user", "content": "hello"}
    # template and hand-off paths do not call the model
    writer.last_prompt = None
    out = bot.answer_many(["top up 5 EUR", "the weather"])
    assert [o["path"] for o in out] == ["template", "handoff"] and writer.last_prompt is None


def test_a_run_with_generation_loads_its_writer(tiny_lm: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    meta = {
        "intents": KeywordModel.labels,
        "confidence_threshold": 0.6,
        "min_retrieval_score": 0.1,
        "sources": 3,
        "handoff_message": "x",
        "generation": {"run": str(tiny_lm), "max_new_tokens": 4},
    }
    (run / "support.json").write_text(json.dumps(meta))
    bot = Assistant.load(run, intent_model=KeywordModel())
    assert isinstance(bot.writer, GroundedWriter) and bot.writer.max_new_tokens == 4
    assert Assistant.load(run, intent_model=KeywordModel(), writer=False).writer is None


def test_generation_run_that_is_not_a_causal_lm_is_named(tmp_path: Path) -> None:
    cfg: dict[str, Any] = support_config(tmp_path, generation={"run": str(tmp_path / "nope")})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="`generation.run`.*nope.*not a causal language model"):
        load_support_config(path)
    cfg["generation"] = {"run": "smollm2", "max_new_tokens": 32}
    path.write_text(yaml.safe_dump(cfg))
    assert load_support_config(path).generation is not None
