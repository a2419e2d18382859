"""Generation (task.type: generation): supervised fine-tuning of a causal LM.

Tiny random LlamaForCausalLM on the SmolLM2 tokenizer and chat template (converted from the
packaged GGUF once per session, see conftest). Checked: the loss mask, packing without
cross-example attention, a toy SFT run that learns its answers, exact resume, the run folder,
`tailor generate` and `tailor evaluate`, and the errors on bad input. The real SmolLM2 runs
under `-m slow`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from tailorml.cli import app
from tailorml.config.load import validate_mapping
from tailorml.config.schema import RunConfig
from tailorml.data.sft import IGNORE, Chats, collate_lm, encode_chats, pack, render
from tailorml.errors import ConfigError, DataError

from .conftest import assert_same_weights, write_jsonl

TOY = [
    ("What colour is the sky?", "Blue."),
    ("How many legs has a cat?", "Four legs."),
    ("Say hello.", "Hello there, friend!"),
    ("What do bees make?", "Honey."),
]


@pytest.fixture(scope="module")
def tok() -> Any:
    from tailorml.models.causal_lm import load_causal_tokenizer

    return load_causal_tokenizer(None)


def _tiny_model(tok: Any, hidden: int = 32, seed: int = 0) -> Any:
    from tailorml.config.schema import ModelConfig
    from tailorml.models.causal_lm import build_causal_lm

    torch.manual_seed(seed)
    return build_causal_lm(ModelConfig(base="tiny", tiny_hidden_size=hidden), [], tok).eval()


def _config(tmp: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    train = write_jsonl(tmp / "train.jsonl", [{"prompt": p, "response": r} for p, r in TOY] * 8)
    test = write_jsonl(tmp / "test.jsonl", [{"prompt": p, "response": r} for p, r in TOY])
    cfg: dict[str, Any] = {
        "name": "toy-sft",
        "output_dir": str(tmp / "run"),
        "data": {
            "train": str(train),
            "eval": str(test),
            "test": str(test),
            "prompt_column": "prompt",
            "response_column": "response",
            "max_length": 128,
        },
        "model": {"base": "tiny", "tiny_hidden_size": 64},
        "task": {"type": "generation"},
        "train": {
            "max_steps": 80,
            "batch_size": 4,
            "lr": 1e-2,
            "seed": 0,
            "threads": 1,
            "log_every_steps": 10,
            "eval_every_steps": 40,
            "precision": "fp32",  # figures compared exactly (bf16 on an AMX CPU rounds otherwise)
        },
        "generate": {"samples": 4, "max_new_tokens": 16},
    }
    for key, val in sections.items():
        cfg.setdefault(key, {}).update(val)
    return cfg


def _cfg(raw: dict[str, Any]) -> RunConfig:
    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    return cfg


# ---- the loss mask ----------------------------------------------------------------------------
def test_loss_mask_covers_exactly_the_assistant_turns(tok: Any) -> None:
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi, who are you?"},
        {"role": "assistant", "content": "A helper."},
        {"role": "user", "content": "And what do you do?"},
        {"role": "assistant", "content": "I answer questions about cards."},
    ]
    enc = encode_chats(tok, Chats([chat], "x", [1]), max_length=512)
    ids, labels = enc.input_ids[0], enc.labels[0]
    eos = tok.eos_token_id
    # The learned tokens are each answer's own tokens followed by the end-of-turn token.
    want = (
        tok("A helper.", add_special_tokens=False)["input_ids"]
        + [eos]
        + tok("I answer questions about cards.", add_special_tokens=False)["input_ids"]
        + [eos]
    )
    assert [y for y in labels if y != IGNORE] == want
    assert all(y in (IGNORE, i) for i, y in zip(ids, labels, strict=True))
    # Everything else (system, user turns, role headers, newlines) is masked: the masked tokens
    # decode to the whole chat text minus the answers.
    text, spans = render(tok, chat)
    masked = tok.decode([i for i, y in zip(ids, labels, strict=True) if y == IGNORE])
    rest = text[: spans[0][0]] + text[spans[0][1] : spans[1][0]] + text[spans[1][1] :]
    assert masked == rest and "Hi, who are you?" in masked and "A helper." not in masked
    # The full sequence is exactly the template's rendering.
    assert tok.decode(ids) == text


def test_prompt_response_rows_mask_the_prompt_and_count_truncation(tok: Any) -> None:
    msgs = [[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Yes."}]]
    enc = encode_chats(tok, Chats(msgs * 2, "x", [1, 2]), max_length=512)
    learned = [y for y in enc.labels[0] if y != IGNORE]
    assert learned == tok("Yes.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n = len(enc.input_ids[0])
    cut = encode_chats(tok, Chats(msgs * 2, "x", [1, 2]), max_length=n - 2)
    assert cut.n_truncated == 2 and cut.lengths.tolist() == [n - 2, n - 2]
    assert cut.labels[0] == enc.labels[0][: n - 2]


def test_text_scores_on_hand_computed_pairs() -> None:
    from tailorml.evaluate.text_metrics import exact_match, rouge_l, text_scores, token_f1

    # LCS "the cat on the mat" = 5 of 6 tokens each way: P = R = F = 5/6.
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    # Same bag of words in another order: token F1 is 1, ROUGE-L only counts the order kept
    # (LCS 2 of 4: "the on" / "the cat").
    assert token_f1("mat the on cat", "the cat on mat") == 1.0
    assert rouge_l("mat the on cat", "the cat on mat") == pytest.approx(0.5)
    assert exact_match("Blue.", " blue ") == 1.0 and exact_match("Blue", "Blue sky") == 0.0
    assert token_f1("", "x") == 0.0 and rouge_l("", "") == 1.0
    assert text_scores(["a b", "c"], ["a b", "d"]) == {
        "rouge_l": 0.5,
        "token_f1": 0.5,
        "exact_match": 0.5,
    }


# ---- packing ----------------------------------------------------------------------------------
def test_pack_places_every_example_once_within_the_block() -> None:
    lengths = [50, 10, 70, 30, 30, 100, 5, 64]
    blocks = pack(lengths, 128)
    assert sorted(i for b in blocks for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 128 for b in blocks)
    assert len(blocks) == 3  # 359 tokens: the fewest blocks of 128 that can hold them


def test_packed_examples_do_not_attend_to_each_other(tok: Any) -> None:
    """The logits of an example packed behind others equal its logits alone; concatenated
    without the position reset they differ (so the check can fail)."""
    model = _tiny_model(tok)
    chats = Chats(
        [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in TOY[:3]],
        "x",
        [1, 2, 3],
    )
    enc = encode_chats(tok, chats, 256)
    pad = tok.pad_token_id
    # use_cache=False as in training: with a KV cache transformers does not derive the packed
    # mask from the position ids (and the examples would see each other).
    with torch.inference_mode():
        packed = collate_lm(enc, [[0, 1, 2]], pad, packed=True)
        ids, pos = packed["input_ids"], packed["position_ids"]
        got = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        plain = model(input_ids=ids, use_cache=False).logits[0]  # one causal sequence
        start = 0
        for i in range(3):
            alone = model(input_ids=torch.tensor([enc.input_ids[i]]), use_cache=False).logits[0]
            n = len(enc.input_ids[i])
            torch.testing.assert_close(got[start : start + n], alone, atol=1e-5, rtol=1e-4)
            if i > 0:
                assert (plain[start : start + n] - alone).abs().max() > 1e-3
            start += n


def test_packed_and_padded_batches_give_the_same_loss(tok: Any) -> None:
    from tailorml.models.causal_lm import token_loss_sums

    model = _tiny_model(tok)
    chats = Chats(
        [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in TOY],
        "x",
        [1, 2, 3, 4],
    )
    enc = encode_chats(tok, chats, 256)
    with torch.inference_mode():
        s1, n1 = token_loss_sums(model, collate_lm(enc, [[0, 1], [2, 3]], 2, packed=True))
        s2, n2 = token_loss_sums(model, collate_lm(enc, [[0], [1], [2], [3]], 2, packed=False))
    assert int(n1.sum()) == int(n2.sum()) == enc.n_target_tokens
    assert float(s1.sum()) == pytest.approx(float(s2.sum()), rel=1e-4)


# ---- a toy run --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from tailorml.recipes.sft import sft

    tmp = tmp_path_factory.mktemp("sft")
    results = sft(_cfg(_config(tmp)))
    return tmp / "run", results


def test_toy_sft_learns_its_answers_and_writes_a_run_folder(
    run: tuple[Path, dict[str, Any]],
) -> None:
    out, results = run
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert losses[-1] < 0.2 * losses[0], losses
    gen = results["generated"]
    assert gen["samples"] == 4 and gen["exact_match"] == 1.0 and gen["rouge_l"] == 1.0
    for split in ("eval", "test"):
        m = results[split]
        assert m["perplexity"] == pytest.approx(float(torch.tensor(m["loss"]).exp()), rel=1e-6)
    saved = json.loads((out / "eval.json").read_text())
    assert saved["test"] == results["test"] and saved["generated_examples"][0]["output"]
    model = out / "model"
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (model / name).is_file(), name
    assert not list(model.glob("*.bin")) and not list(model.glob("*.pt"))
    info = json.loads((model / "task.json").read_text())
    assert info["task"] == "generation" and info["family"] == "causal-lm"
    assert info["data"]["prompt_column"] == "prompt" and info["base"] == "tiny"
    report = (out / "report.md").read_text()
    assert "| prompt | reference | output |" in report and "| Say hello. |" in report
    assert "perplexity" in report and (out / "plots" / "loss.png").is_file()


def test_the_run_folder_is_a_plain_hf_causal_lm(run: tuple[Path, dict[str, Any]]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = run
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(out / "model")).eval()
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What do bees make?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    enc = tok(text, add_special_tokens=False, return_tensors="pt")
    ids = model.generate(**enc, max_new_tokens=8, do_sample=False)  # generation_config: EOS
    assert tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True) == "Honey."


def test_resume_is_exact(tmp_path: Path) -> None:
    from tailorml.recipes.sft import sft

    def cfg(name: str) -> RunConfig:
        (tmp_path / name).mkdir()
        raw = _config(
            tmp_path / name,
            model={"dropout": 0.1},  # dropout on: the RNG state must come back too
            train={"max_steps": 12, "eval_every_steps": 4, "save_every_steps": 4},
            generate={"samples": 0},
        )
        return _cfg(raw)

    full = cfg("full")
    sft(full)
    part = cfg("part")
    with pytest.raises(KeyboardInterrupt):
        sft(part, stop_after_steps=6)  # off the save grid
    assert not (Path(part.output_dir) / "eval.json").exists()
    sft(part, resume=True)
    assert_same_weights(full.output_dir, part.output_dir)


# ---- tailor generate / evaluate ---------------------------------------------------------------
def _generate(args: list[str], stdin: str | None = None) -> list[dict[str, Any]]:
    res = CliRunner().invoke(app, ["generate", *args], input=stdin)
    assert res.exit_code == 0, res.output
    return [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]


def test_generate_cli_prompts_file_stdin_stop_and_finish_reasons(
    run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = run
    got = _generate([str(out), "-p", "Say hello.", "-p", "How many legs has a cat?"])
    assert [g["output"] for g in got] == ["Hello there, friend!", "Four legs."]
    assert [g["input"] for g in got] == ["Say hello.", "How many legs has a cat?"]
    assert all(g["finish_reason"] == "eos" and g["tokens"] > 1 for g in got)
    # A stop string cuts the output before it; a token budget ends it by length.
    (stop,) = _generate([str(out), "-p", "How many legs has a cat?", "--stop", " legs"])
    assert stop["output"] == "Four" and stop["finish_reason"] == "stop"
    (short,) = _generate([str(out), "-p", "Say hello.", "--max-new-tokens", "1"])
    assert short["finish_reason"] == "length" and short["tokens"] == 1
    # A file of plain lines and JSONL (prompt or messages), batched with left padding.
    f = tmp_path / "in.jsonl"
    f.write_text(
        "What do bees make?\n"
        + json.dumps({"prompt": "What colour is the sky?"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Say hello."}]})
        + "\n"
    )
    res_file = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app, ["generate", str(out), "-i", str(f), "-o", str(res_file)])
    assert res.exit_code == 0, res.output
    outs = [json.loads(x)["output"] for x in res_file.read_text().splitlines()]
    assert outs == ["Honey.", "Blue.", "Hello there, friend!"]
    one_by_one = _generate([str(out), "-i", str(f), "--batch-size", "1"])
    assert [g["output"] for g in one_by_one] == outs
    # More prompts than one batch: a progress line per batch on stderr, JSONL alone on stdout.
    res = CliRunner().invoke(app, ["generate", str(out), "-i", str(f), "--batch-size", "2"])
    assert res.exit_code == 0 and "generated 2/3 prompts" in res.stderr, res.output
    assert "generated 3/3 prompts" in res.stderr
    assert [json.loads(x)["output"] for x in res.stdout.splitlines()] == outs
    piped = _generate([str(out), "-i", "-"], stdin="What do bees make?\n")
    assert [g["output"] for g in piped] == ["Honey."]


def test_generate_sampling_is_repeatable_with_a_seed(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    args = [str(out), "-p", "Say hello.", "--temperature", "5", "--top-k", "50"]
    args += ["--max-new-tokens", "12"]
    a = _generate([*args, "--seed", "3"])
    b = _generate([*args, "--seed", "3"])
    c = _generate([*args, "--seed", "4"])
    assert a == b and a[0]["output"] != "Hello there, friend!"
    assert a != c or a[0]["tokens"] == 12  # different seeds almost surely differ


def test_generate_cli_errors(run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = run
    res = CliRunner().invoke(app, ["generate", str(out)])
    assert res.exit_code == 2 and "--prompt" in res.output
    res = CliRunner().invoke(
        app, ["generate", str(out), "-p", "x", "--top-p", "0", "--top-k", "-1"]
    )
    assert res.exit_code == 2, res.output
    assert "--top-p is 0.0; it must be in (0, 1]" in res.output and "--top-k is -1" in res.output
    assert "--temperature" not in res.output  # only what is wrong is named
    bad = tmp_path / "bad.jsonl"
    bad.write_text("Hi\n\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    res = CliRunner().invoke(app, ["generate", str(out), "-i", str(bad)])
    assert res.exit_code == 2 and f"{bad}:3" in res.output and "'bot'" in res.output
    res = CliRunner().invoke(app, ["generate", str(tmp_path), "-p", "x"])
    assert res.exit_code == 2 and "not a run folder" in res.output
    # The classifier commands refuse a generation run and name the one that runs it.
    res = CliRunner().invoke(app, ["predict", str(out), "-i", str(bad)])
    assert res.exit_code == 2 and "tailor generate" in res.output


def test_evaluate_a_generation_run_reports_what_training_reported(
    run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, results = run
    res = CliRunner().invoke(app, ["evaluate", str(out), "--output", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    want = results["test"]
    assert m["loss"] == pytest.approx(want["loss"], rel=1e-4) and m["tokens"] == want["tokens"]
    for k in ("rouge_l", "token_f1", "exact_match"):
        assert m[k] == results["generated"][k], k
    # --data: any file with the run's columns.
    rows = [{"prompt": "What do bees make?", "response": "Wax."}]
    f = write_jsonl(tmp_path / "other.jsonl", rows)
    res = CliRunner().invoke(app, ["evaluate", str(out), "--data", str(f)])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert shown["n"] == 1 and shown["exact_match"] == 0.0 and shown["source"] == str(f)
    # A plain Hugging Face causal-LM folder (no task.json): columns `prompt` and `response`.
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(out / "model", plain, ignore=shutil.ignore_patterns("task.json"))
    res = CliRunner().invoke(app, ["evaluate", str(plain), "--data", str(f), "--samples", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["loss"] == pytest.approx(shown["loss"], rel=1e-5)


# ---- bad input: clear errors, nothing written -------------------------------------------------
def test_generation_config_needs_its_columns() -> None:
    base = {"data": {"train": "x.jsonl"}, "task": {"type": "generation"}}
    _, problems = validate_mapping(base)
    assert any("`data.prompt_column` and `data.response_column` are not set" in p for p in problems)
    raw = {**base, "data": {"train": "x.jsonl", "prompt_column": "q"}}
    _, problems = validate_mapping(raw)
    assert any("`data.response_column` is not set" in p for p in problems)
    both = {"train": "x.jsonl", "prompt_column": "q", "response_column": "a"}
    _, problems = validate_mapping({**base, "data": {**both, "messages_column": "m"}})
    assert any("Choose one" in p for p in problems)
    _, problems = validate_mapping(
        {"heads": {"g": {"data": {"train": "x", **both}, "task": {"type": "generation"}}}}
    )
    assert any("cannot share a model" in p for p in problems)


def test_bad_rows_are_named_with_file_and_line_before_anything_is_written(tmp_path: Path) -> None:
    from tailorml.recipes.sft import sft

    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
        {"messages": [{"role": "user", "content": "hi"}]},
    ]
    f = write_jsonl(tmp_path / "chats.jsonl", rows)
    raw = _config(tmp_path)
    raw["data"].update(train=str(f), prompt_column=None, response_column=None)
    raw["data"]["messages_column"] = "messages"
    with pytest.raises(DataError) as err:
        sft(_cfg(raw))
    msg = str(err.value)
    assert f"{f}:2: message 1: role 'robot' is not one of system, user, assistant" in msg
    assert f"{f}:3: message 1: empty assistant answer" in msg
    assert f"{f}:4: no assistant message" in msg and f"{f}:1" not in msg
    assert not (tmp_path / "run").exists()

    pr = write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "q", "response": ""}, {"prompt": "q"}])
    raw = _config(tmp_path)
    raw["data"]["train"] = str(pr)
    with pytest.raises(DataError, match=r"pr.jsonl:1: empty response \(column 'response'\)"):
        sft(_cfg(raw))
    raw["data"].update(train=str(tmp_path / "train.jsonl"), response_column="answer")
    with pytest.raises(DataError, match="column 'answer' \\(from `data.response_column`\\)"):
        sft(_cfg(raw))
    raw["data"]["response_column"] = "response"
    raw["model"]["base"] = "minilm"
    with pytest.raises(ConfigError, match="is an encoder; a generation task needs a causal LM"):
        sft(_cfg(raw))
    assert not (tmp_path / "run").exists()


def test_chats_in_a_messages_column_and_tailor_validate(tmp_path: Path) -> None:
    from tailorml.data.sft import prepare_chat_splits

    chat = [
        {"role": "system", "content": "You answer for a bank."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Card lost"},
        {"role": "assistant", "content": "Freeze it in the app."},
    ]
    f = write_jsonl(tmp_path / "chats.jsonl", [{"messages": chat}] * 20)
    raw = _config(tmp_path)
    raw["data"] = {"train": str(f), "messages_column": "messages", "max_length": 64}
    splits = prepare_chat_splits(_cfg(raw))
    assert (len(splits.train), len(splits.eval), len(splits.test)) == (16, 2, 2)
    assert splits.test.prompts()[0] == chat[:4]
    assert splits.test.references() == ["Freeze it in the app."] * 2
    # `tailor validate` runs the same checks and lists every problem.
    from tailorml.config.load import dump_config
    from tailorml.recipes.validate import validate_config

    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(_cfg(raw)), encoding="utf-8")
    assert validate_config(path) == []
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": chat[:1]}, {"messages": chat}])
    problems = validate_config(path, [f"data.train={bad}", "train.metric_for_best=rouge"])
    assert any(f"{bad}:1: no assistant message" in p for p in problems), problems
    assert any("`train.metric_for_best` = 'rouge'" in p for p in problems), problems


# ---- the real model ---------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_loads_from_the_package_and_answers_sensibly() -> None:
    from tailorml.predictors.generator import Generator

    gen = Generator.load("smollm2")
    assert type(gen.model).__name__ == "LlamaForCausalLM"
    (g,) = gen.generate(["What is the capital of France? Answer in one word."], 24)
    assert "paris" in g.output.lower(), g


# ---- LoRA (model.lora) ------------------------------------------------------------------------
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}
PROMPTS = [p for p, _ in TOY]

RELOAD = """
import json, sys
import torch
from tailorml.predictors.generator import Generator
gen = Generator.load(sys.argv[1])
enc = gen.tokenizer([gen.render(p) for p in json.loads(sys.argv[2])], padding=True,
                    add_special_tokens=False, return_tensors="pt")
with torch.inference_mode():
    logits = gen.model(**enc).logits[:, -1]
outs = [g.output for g in gen.generate(json.loads(sys.argv[2]), max_new_tokens=16)]
print(json.dumps({"logits": logits.tolist(), "outputs": outs}))
"""


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """LoRA on the random `tiny` base (saved in the folder as base/): it learns the toy answers
    only partly (frozen random embeddings), so the checks below compare logits and outputs of
    the same model loaded different ways rather than demand the answers."""
    from tailorml.recipes.sft import sft

    tmp = tmp_path_factory.mktemp("sft-lora")
    raw = _config(tmp, model={"lora": LORA}, train={"max_steps": 40, "eval_every_steps": 20})
    results = sft(_cfg(raw))
    return tmp / "run", results


def _tiny_base_for(run: Path) -> Any:
    """The tiny base the LoRA run trained on, rebuilt as the recipe builds it (seed 0)."""
    from tailorml import env
    from tailorml.config.schema import ModelConfig
    from tailorml.models.causal_lm import build_causal_lm, load_causal_tokenizer

    env.seed_everything(0)
    cfg = ModelConfig(base="tiny", tiny_hidden_size=64)
    return build_causal_lm(cfg, [], load_causal_tokenizer(run / "model")).eval()


def test_lora_sft_trains_only_the_adapters(lora_run: tuple[Path, dict[str, Any]]) -> None:
    from safetensors.torch import load_file

    from tailorml.models.causal_lm import load_causal_lm

    out, results = lora_run
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert losses[-1] < losses[0] - 0.3, losses  # falls, slowly: a frozen random base
    tr = results["train"]
    assert 0 < tr["trainable_params"] < 0.2 * tr["total_params"] and tr["peak_memory_mb"] > 0
    saved = json.loads((out / "eval.json").read_text())["train"]
    assert saved["trainable_params"] == tr["trainable_params"]
    assert "trained of" in (out / "report.md").read_text()
    auto = json.loads((out / "auto.json").read_text())
    assert "train.lr" not in auto  # set in the config; left out, LoRA gets 30x (test below)

    model = out / "model"
    names = {p.name for p in model.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json"} <= names
    assert {"generation_config.json", "task.json", "tokenizer.json", "base"} <= names
    assert "model.safetensors" not in names
    info = json.loads((model / "task.json").read_text())
    assert info["family"] == "causal-lm" and info["lora_base"] == "base"
    targets = json.loads((model / "adapter_config.json").read_text())["target_modules"]
    assert {t.rsplit(".", 1)[-1] for t in targets} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    adapter = load_file(str(model / "adapter_model.safetensors"))
    assert all("lora_" in k for k in adapter), list(adapter)[:5]  # no embeddings, no head
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())

    # The saved base is the tiny base as built, untouched; merged, only adapted layers moved.
    base = _tiny_base_for(out).state_dict()
    saved_base = load_file(str(model / "base" / "model.safetensors"))
    assert all(torch.equal(saved_base[k], base[k]) for k in saved_base)
    merged = load_causal_lm(model).state_dict()
    moved = {k for k in base if not torch.equal(merged[k], base[k])}
    assert moved == {f"{t}.weight" for t in targets}, sorted(moved)[:5]
    assert merged["lm_head.weight"].data_ptr() == merged["model.embed_tokens.weight"].data_ptr()


@pytest.mark.slow  # a fresh process (~11 s)
def test_lora_sft_folder_reloads_in_a_fresh_process_and_merges(
    lora_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    import subprocess
    import sys

    import numpy as np
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tailorml.predictors.generator import Generator

    from .conftest import REPO

    out, results = lora_run
    # The model as trained: the rebuilt base with the adapter on top, not merged.
    live = Generator(
        PeftModel.from_pretrained(_tiny_base_for(out), str(out / "model")).eval(),
        Generator.load(out).tokenizer,
    )
    enc = live.tokenizer(
        [live.render(p) for p in PROMPTS],
        padding=True,
        add_special_tokens=False,
        return_tensors="pt",
    )
    with torch.inference_mode():
        want = live.model(**enc).logits[:, -1].numpy()
    outputs = [g.output for g in live.generate(PROMPTS, max_new_tokens=16)]
    trained = [ex["output"] for ex in results["generated_examples"]]
    assert [o.strip() for o in outputs] == trained  # what the run reported
    res = subprocess.run(
        [sys.executable, "-c", RELOAD, str(out), json.dumps(PROMPTS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.array(got["logits"]), want, atol=1e-4)
    assert got["outputs"] == outputs

    # tailor merge: a plain causal-LM folder with the same logits and answers.
    merged = tmp_path / "merged"
    res_m = CliRunner().invoke(app, ["merge", str(out), "-o", str(merged)])
    assert res_m.exit_code == 0, res_m.output
    names = {p.name for p in merged.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    info = json.loads((merged / "task.json").read_text())
    assert "lora_base" not in info and info["family"] == "causal-lm"
    plain = AutoModelForCausalLM.from_pretrained(str(merged)).eval()
    with torch.inference_mode():
        np.testing.assert_allclose(plain(**enc).logits[:, -1].numpy(), want, atol=1e-4)
    args = [a for p in PROMPTS for a in ("-p", p)]
    got_m = _generate([str(merged), *args, "--max-new-tokens", "16"])
    assert [g["output"] for g in got_m] == outputs
    # tailor evaluate on the LoRA run: the test loss training reported.
    res_e = CliRunner().invoke(app, ["evaluate", str(out), "--samples", "0"])
    assert res_e.exit_code == 0, res_e.output
    loss = json.loads(res_e.stdout)["loss"]
    assert loss == pytest.approx(results["test"]["loss"], rel=1e-4)


def test_lora_sft_resume_is_exact(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from tailorml.recipes.sft import sft

    def cfg(name: str) -> RunConfig:
        (tmp_path / name).mkdir()
        raw = _config(
            tmp_path / name,
            model={"lora": {**LORA, "dropout": 0.1}},  # LoRA dropout: the RNG state resumes
            train={"max_steps": 12, "eval_every_steps": 4, "save_every_steps": 4},
            generate={"samples": 0},
        )
        return _cfg(raw)

    full = cfg("full")
    sft(full)
    part = cfg("part")
    with pytest.raises(KeyboardInterrupt):
        sft(part, stop_after_steps=6)
    ckpt = Path(part.output_dir) / "checkpoints" / "step-4"
    assert (ckpt / "adapter_model.safetensors").is_file()
    assert not (ckpt / "model.safetensors").exists()
    sft(part, resume=True)
    for name in ("adapter_model.safetensors", "base/model.safetensors"):
        a = load_file(str(Path(full.output_dir) / "model" / name))
        b = load_file(str(Path(part.output_dir) / "model" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_left_out_lr_is_chosen_for_lora_sft(tmp_path: Path) -> None:
    from tailorml.recipes.sft import sft

    raw = _config(tmp_path, model={"lora": LORA}, train={"max_steps": 1}, generate={"samples": 0})
    del raw["train"]["lr"]
    sft(_cfg(raw))
    auto = json.loads((tmp_path / "run" / "auto.json").read_text())
    assert auto["train.lr"]["value"] == pytest.approx(3e-3) and "LoRA" in auto["train.lr"]["why"]


def test_bad_lora_targets_in_a_generation_config_leave_no_run(tmp_path: Path) -> None:
    from tailorml.config.load import dump_config
    from tailorml.recipes.sft import sft
    from tailorml.recipes.validate import validate_config

    raw = _config(tmp_path, model={"lora": {**LORA, "target_modules": ["query", "v_proj"]}})
    with pytest.raises(ConfigError, match=r"\['query'\] name no Linear layer.*'q_proj'"):
        sft(_cfg(raw))
    assert not (tmp_path / "run").exists()
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(_cfg(raw)), encoding="utf-8")
    problems = validate_config(path)
    assert any("['query'] name no Linear layer" in p for p in problems), problems
    assert validate_config(path, ["model.lora.target_modules=[q_proj,v_proj]"]) == []
