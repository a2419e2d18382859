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


def test_grounded_data_teaches_citing_the_right_passage_or_handing_off(tmp_path: Path) -> None:
    from tailorml.apps.support.grounded import NOT_COVERED, grounded_data
    from tailorml.data.sft import check_messages

    retriever = keyword_bot().retriever
    rows = [
        {"q": "my pin is blocked", "a": "Unblock it in settings.", "doc": "pin_blocked"},
        # the card article is found only second for a PIN question: cited as [2] with a low floor
        {"q": "pin blocked, card too", "a": "Cards come by post.", "doc": "card_arrival"},
    ]
    out = tmp_path / "chats.jsonl"
    counts = grounded_data(retriever, rows, "q", "a", "doc", out, sources=2, floor=0.0)
    chats = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    assert counts == {"rows": 2, "not_covered": 0, "cited_1": 1, "cited_2": 1}
    assert chats[0][-1] == {"role": "assistant", "content": "Unblock it in settings. [1]"}
    assert chats[1][-1]["content"] == "Cards come by post. [2]"
    # the prompt is the one the assistant gives the writer
    used = retriever.search_many(["my pin is blocked"], k=2)[0]
    assert chats[0][:-1] == grounded_messages("my pin is blocked", used)
    assert all(check_messages(c, "messages")[1] is None for c in chats)
    # a floor that keeps only the best passage: the card article is missed, so hand off
    counts = grounded_data(retriever, rows, "q", "a", "doc", out, sources=2, floor=99.0)
    assert counts["not_covered"] == 1
    last = json.loads(out.read_text().splitlines()[1])["messages"]
    assert last[-1]["content"] == NOT_COVERED and "card_arrival" not in last[0]["content"]


def test_grounded_data_names_bad_columns_and_unknown_articles(tmp_path: Path) -> None:
    from tailorml.apps.support.grounded import grounded_data

    retriever = keyword_bot().retriever
    rows = [{"q": "my pin", "a": "x", "doc": "no_such_article"}]
    with pytest.raises(ConfigError, match="column 'doc'.*'no_such_article'"):
        grounded_data(retriever, rows, "q", "a", "doc", tmp_path / "o.jsonl")
    with pytest.raises(ConfigError, match="no column 'answer'.*--answer-column"):
        grounded_data(retriever, rows, "q", "answer", "doc", tmp_path / "o.jsonl")
    with pytest.raises(ConfigError, match="row 2 has an empty 'a'"):
        grounded_data(retriever, [*rows, {"q": "pin", "a": " ", "doc": "pin_blocked"}], "q",
                      "a", "doc", tmp_path / "o.jsonl")  # fmt: skip
    assert not (tmp_path / "o.jsonl").exists()


def test_grounded_data_command_indexes_an_articles_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tailorml.cli import app

    kb = tmp_path / "kb"
    kb.mkdir()
    for doc, (title, text) in {
        "pin_blocked": ("Blocked PIN", "If your PIN is blocked, unblock it in the app settings."),
        "card_arrival": ("Where is my card?", "Cards arrive by post within 5 working days."),
    }.items():
        (kb / f"{doc}.md").write_text(f"# {title}\n\n{text}\n")
    data = tmp_path / "d.csv"
    data.write_text(
        "text,answer,label\nmy PIN is blocked,Unblock it in the app.,pin_blocked\n"
        "where is my new card,It comes by post.,card_arrival\n"
    )
    out = tmp_path / "chats.jsonl"
    res = CliRunner().invoke(
        app, ["support", "grounded-data", str(kb), "--data", str(data), "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "wrote 2 chats" in res.output
    replies = [json.loads(x)["messages"][-1]["content"] for x in out.read_text().splitlines()]
    assert replies == ["Unblock it in the app. [1]", "It comes by post. [1]"]
    bad = CliRunner().invoke(
        app, ["support", "grounded-data", str(kb), "--data", str(data), "-o", str(out),
              "--doc-column", "article"],
    )  # fmt: skip
    assert bad.exit_code == 2 and "no column 'article'" in bad.output


def test_a_writer_answering_with_the_hand_off_line_hands_off() -> None:
    from tailorml.apps.support.grounded import NOT_COVERED

    class Declining:
        def write(self, message: str, hits: list[Hit], history: list[Any]) -> str:
            return cite(NOT_COVERED if "pin" in message else "Cards come by post. [1]", hits)

    bot = keyword_bot()
    bot.writer = Declining()
    pin, card = bot.answer_many(["my pin is blocked", "where is my card"])
    assert pin["path"] == "handoff" and pin["handoff"] and pin["sources"] == []
    assert pin["answer"] == "A colleague will reply here."
    assert card["path"] == "retrieval" and card["answer"] == "Cards come by post. [1]"
    # without a writer, an article quoting the line is still an answer
    bot.writer = None
    assert bot.answer_many(["my pin is blocked"])[0]["path"] == "retrieval"
