"""Pretraining (`tailor pretrain`): tokenizers trained from a corpus, cached token shards, the
bounded-memory block reader, MLM masking, tiny CLM and MLM runs from scratch (loss goes down,
the run folder loads with the Auto classes and fine-tunes), exact resume, and bad input named
by its key. Tiny models and a toy corpus only; the packaged MiniLM is read for its config alone.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tailorml.config.load import validate_mapping
from tailorml.config.schema import RunConfig
from tailorml.data.corpus import CorpusFile, expand_corpus, iter_documents
from tailorml.data.masking import Masker, train_rng
from tailorml.data.sft import IGNORE
from tailorml.data.shards import Shards, build_shards
from tailorml.errors import DataError
from tailorml.train.flops import flops_per_token

from .conftest import assert_same_weights, make_rows, tiny_config, write_config, write_csv

SUBJECTS = ["the cat", "a dog", "the bird", "my friend", "the market", "a trader"]
VERBS = ["sees", "likes", "finds", "buys", "sells", "watches"]
OBJECTS = ["the ball", "a house", "the river", "some shares", "the moon", "a book"]


def _corpus(path: Path, n: int = 300, seed: int = 0) -> Path:
    """A repetitive toy corpus: short paragraphs of subject-verb-object sentences."""
    rng = random.Random(seed)
    paras = []
    for _ in range(n):
        k = rng.randint(1, 3)
        s = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(k)]
        paras.append(" ".join(s))
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _corpus(tmp_path_factory.mktemp("corpus") / "toy.txt")


@pytest.fixture(scope="module")
def shard_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shards")


def _raw(tmp: Path, corpus: Path, cache: Path, objective: str, **sections: Any) -> dict:
    arch = "bert" if objective == "mlm" else "llama"
    raw: dict[str, Any] = {
        "name": f"toy-{objective}",
        "output_dir": str(tmp / f"run-{objective}"),
        "pretrain": {
            "objective": objective,
            "corpus": [str(corpus)],
            "block_size": 32,
            "eval_fraction": 0.1,
            "cache_dir": str(cache),
            "samples": 2,
        },
        "tokenizer": {"vocab_size": 400 if objective == "clm" else 200},
        "model": {"init": {"arch": arch, "preset": "tiny"}},
        "train": {
            "max_steps": 40,
            "batch_size": 8,
            "lr": 5e-3,
            "seed": 0,
            "threads": 1,
            "log_every_steps": 5,
            "eval_every_steps": 20,
        },
    }
    for key, val in sections.items():
        raw.setdefault(key, {}).update(val)
    return raw


def _cfg(raw: dict) -> RunConfig:
    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    return cfg


# ---- tokenizers -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "objective"), [("wordpiece", "mlm"), ("bpe", "clm"), ("unigram", "clm")]
)
def test_trained_tokenizer_round_trips_through_autotokenizer(
    kind: str, objective: str, corpus: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from tailorml.models.presets import SPECIALS
    from tailorml.models.pretrain import train_tokenizer

    docs = list(iter_documents(corpus))
    vocab = 600 if kind == "bpe" else 300  # byte-level BPE spends 256 on the bytes
    tok = train_tokenizer(kind, objective, vocab, 2, iter(docs))
    tok.save_pretrained(str(tmp_path / "tok"))
    back = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    for role, token in SPECIALS[objective].items():
        assert getattr(back, role) == token and back.convert_tokens_to_ids(token) is not None
    text = "the cat sees a house. my friend buys some shares."
    ids = back(text, add_special_tokens=False)["input_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert back.unk_token_id not in ids  # every word of the corpus is covered
    if kind != "unigram":  # pieces longer than characters were learned
        assert len(ids) < len(text) / 2
    else:  # Unigram prunes to ~characters on a corpus of 18 distinct words (not a defect)
        assert len(back) > len(SPECIALS[objective]) + 20
    assert back.decode(ids).strip() == text
    if objective == "mlm":  # [CLS] text [SEP]
        full = back(text)["input_ids"]
        assert full[0] == back.cls_token_id and full[-1] == back.sep_token_id


# ---- shards -----------------------------------------------------------------------------------
def _word_tokenizer(corpus: Path) -> Any:
    from tailorml.models.pretrain import train_tokenizer

    return train_tokenizer("wordpiece", "mlm", 200, 1, iter_documents(corpus))


def test_shards_are_written_once_reused_and_keyed_by_the_files(
    corpus: Path, tmp_path: Path
) -> None:
    from tailorml.models.pretrain import tokenizer_hash

    tok = _word_tokenizer(corpus)
    files = expand_corpus([str(corpus)])
    sep = tok.sep_token_id

    def build(fraction: float = 0.2) -> Shards:
        return build_shards(files, tok, sep, fraction, "text", tmp_path, tokenizer_hash(tok))

    first = build()
    assert not first.hit and (first.folder / "index.json").is_file()
    again = build()
    assert again.hit and again.folder == first.folder
    assert [p.name for p in tmp_path.iterdir()] == [first.folder.name]  # no temp folders left
    # The streams hold every document once, each followed by the separator, split by document.
    docs = list(iter_documents(corpus))
    want = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    assert first.tokens("train") + first.tokens("eval") == want
    assert first.documents("train") + first.documents("eval") == len(docs)
    assert 0 < first.documents("eval") < len(docs) * 0.4
    train = first.blocks("train", 16)
    joined = np.concatenate([train[i] for i in range(len(train))])
    stream = np.asarray(first.memmap(0, "train"))
    assert np.array_equal(joined, stream[: len(joined)]) and len(stream) - len(joined) < 16
    # Another held-out share, or a changed file, is another key.
    assert build(0.3).folder != first.folder
    corpus2 = _corpus(tmp_path / "other.txt", n=20, seed=1)
    other = build_shards(expand_corpus([str(corpus2)]), tok, sep, 0.2, "text", tmp_path, "x")
    with corpus2.open("a", encoding="utf-8") as fh:
        fh.write("\n\nthe cat sees the moon.\n")
    changed = build_shards(expand_corpus([str(corpus2)]), tok, sep, 0.2, "text", tmp_path, "x")
    assert not changed.hit and changed.folder != other.folder


def test_block_order_depends_only_on_seed_and_epoch() -> None:
    from tailorml.data.batching import plan_epoch

    lengths = {"": np.full(100, 32)}

    def order(seed: int, epoch: int) -> list[int]:
        return [int(i) for _, b in plan_epoch(lengths, 8, seed, epoch) for i in b]

    assert order(0, 0) == order(0, 0)
    assert sorted(order(0, 0)) == list(range(100))
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/status RssAnon on this system")


def test_reading_a_large_shard_keeps_private_memory_bounded(tmp_path: Path) -> None:
    """A 64 MB shard read block by block: the process's anonymous memory (what cannot be paged
    out) grows by far less than the shard. What this shows: the reader copies one block at a
    time out of the memory map and keeps nothing; the mapped file's pages are page cache that
    the kernel reclaims under pressure (counted in RSS as file pages, not asserted here)."""
    n_tokens = 32 * 1024 * 1024  # uint16: 64 MB
    folder = tmp_path / "big"
    folder.mkdir()
    chunk = np.arange(1 << 20, dtype=np.uint16)
    with (folder / "00000-train.bin").open("wb") as fh:
        for _ in range(n_tokens // len(chunk)):
            fh.write(chunk.tobytes())
    index = {
        "dtype": "uint16",
        "files": [
            {
                "bins": {"train": "00000-train.bin", "eval": "00000-eval.bin"},
                "tokens": {"train": n_tokens, "eval": 0},
                "documents": {"train": 1, "eval": 0},
                "source": 0,
            }
        ],
    }
    blocks = Shards(folder, index, hit=True).blocks("train", 4096)
    before = _rss_anon_kb()
    total = 0
    for i in range(len(blocks)):
        total += int(blocks[i][-1])  # touch every block
    grown_mb = (_rss_anon_kb() - before) / 1024
    assert len(blocks) == n_tokens // 4096 and total > 0
    assert grown_mb < 8, f"anonymous memory grew {grown_mb:.1f} MB reading a 64 MB shard"


# ---- masking ----------------------------------------------------------------------------------
def test_mlm_masking_is_80_10_10_and_never_touches_special_tokens() -> None:
    specials = np.array([0, 1, 2, 3, 4])
    m = Masker(0.15, mask_id=4, specials=specials, vocab_size=1000)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, size=200_000)
    ids[::50] = 2  # separators sprinkled in
    inputs, labels = m.mask(ids, np.random.default_rng(1))
    chosen = labels != IGNORE
    assert abs(chosen[ids != 2].mean() - 0.15) < 0.005
    assert not chosen[ids == 2].any() and np.array_equal(inputs[ids == 2], ids[ids == 2])
    assert np.array_equal(labels[chosen], ids[chosen]) and np.array_equal(
        inputs[~chosen], ids[~chosen]
    )
    as_mask = (inputs[chosen] == 4).mean()
    kept = (inputs[chosen] == ids[chosen]).mean()
    swapped = inputs[chosen][(inputs[chosen] != 4) & (inputs[chosen] != ids[chosen])]
    assert abs(as_mask - 0.8) < 0.01 and abs(kept - 0.1) < 0.01
    assert abs(len(swapped) / chosen.sum() - 0.1) < 0.01  # (a random draw equal to the
    assert not np.isin(swapped, specials).any()  # original counts as kept: 1 in 995)
    # Deterministic per (seed, epoch, unit): a resumed run masks the same way.
    a = m.mask(ids[:500], train_rng(3, 1, 7))
    b = m.mask(ids[:500], train_rng(3, 1, 7))
    c = m.mask(ids[:500], train_rng(3, 2, 7))
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[1], c[1])


# ---- runs -------------------------------------------------------------------------------------
def _train_losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert all("perplexity" in r and r["tokens_per_s"] > 0 for r in train)
    return [r["loss"] for r in train]


@pytest.fixture(scope="module")
def clm_run(tmp_path_factory: pytest.TempPathFactory, corpus: Path, shard_cache: Path) -> Path:
    from tailorml.recipes.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("clm")
    # A stated device peak (as for a GPU not in the table): MFU is logged against it.
    cfg = _cfg(_raw(tmp, corpus, shard_cache, "clm", pretrain={"peak_tflops": 0.25}))
    pretrain(cfg)
    return Path(cfg.output_dir)


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory: pytest.TempPathFactory, corpus: Path, shard_cache: Path) -> Path:
    from tailorml.recipes.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("mlm")
    cfg = _cfg(_raw(tmp, corpus, shard_cache, "mlm", train={"max_steps": 60, "lr": 1e-2}))
    pretrain(cfg)
    return Path(cfg.output_dir)


def test_tiny_clm_from_scratch_learns_and_writes_a_causal_lm_folder(clm_run: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    losses = _train_losses(clm_run)
    assert losses[-1] < 0.6 * losses[0], losses
    ev = json.loads((clm_run / "eval.json").read_text())
    seen = ev["train"]["tokens_seen"]  # 40 batches of up to 8 blocks (an epoch's last: fewer)
    assert ev["eval"]["perplexity"] < 20 and seen % 32 == 0 and 35 * 8 * 32 < seen <= 40 * 8 * 32
    assert ev["train"]["train_tokens_per_s"] > 0 and len(ev["samples"]) == 2
    info = json.loads((clm_run / "model" / "task.json").read_text())
    assert info["pretrained_base"] and info["family"] == "causal-lm"
    model = AutoModelForCausalLM.from_pretrained(str(clm_run / "model"))
    tok = AutoTokenizer.from_pretrained(str(clm_run / "model"))
    assert type(model).__name__ == "LlamaForCausalLM" and tok.eos_token == "</s>"
    ids = tok("the cat sees", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
    # MFU: the logged tokens/s x model FLOPs per token over the stated 0.25 TFLOPS.
    tr, per = ev["train"], flops_per_token(model, 32)
    assert tr["flops_per_token"] == per and tr["peak_source"] == "pretrain.peak_tflops"
    assert tr["mfu"] == pytest.approx(tr["train_tokens_per_s"] * per / 0.25e12, rel=1e-3)
    rows = [json.loads(x) for x in (clm_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert all(r["mfu"] == pytest.approx(r["tokens_per_s"] * per / 0.25e12) for r in train)
    report = (clm_run / "report.md").read_text()
    assert "MFU" in report and "pretrain.peak_tflops" in report
    assert "Greedy continuations" in report and (clm_run / "plots" / "loss.png").is_file()
    # The same held-out prompt continued at each evaluation (steps 20 and 40), in the report.
    assert [e["step"] for e in ev["samples_by_step"]] == [20, 40]
    assert "continued at each evaluation" in report


def test_tiny_mlm_from_scratch_learns_and_is_a_classifier_base(
    mlm_run: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForMaskedLM

    from tailorml.recipes.finetune import finetune

    losses = _train_losses(mlm_run)
    # From ~ln(200) = 5.3 (a guess over the vocabulary) towards the ~ln(6) that the
    # subject/verb/object slots allow; masked tokens are few (~60 a batch), so it is noisy.
    assert np.mean(losses[-3:]) < 0.8 * losses[0] and np.mean(losses[-3:]) < 3.2, losses
    model = AutoModelForMaskedLM.from_pretrained(str(mlm_run / "model"))
    assert type(model).__name__ == "BertForMaskedLM"
    tr = json.loads((mlm_run / "eval.json").read_text())["train"]
    assert tr["mfu"] is None and "set pretrain.peak_tflops" in tr["peak_source"]  # a CPU
    report = (mlm_run / "report.md").read_text()
    assert "MFU not computed" in report
    assert "Masked-token predictions" in report and "masked sample at each evaluation" in report
    # `tailor finetune` takes the folder as model.base (its tokenizer and encoder).
    train = write_csv(tmp_path / "train.csv", make_rows(48, 0))
    test = write_csv(tmp_path / "test.csv", make_rows(24, 1))
    raw = tiny_config(
        tmp_path,
        data={"train": str(train), "eval": str(test), "test": str(test)},
        model={"base": str(mlm_run / "model")},
        train={"epochs": 1, "max_steps": 3},
    )
    res = finetune(_cfg(raw))
    assert res["train"]["steps"] == 3 and "accuracy" in res["test"]


def test_flops_per_token_counts_every_linear_and_the_attention() -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    from tailorml.train.flops import device_peak_flops, mfu

    # BERT, 2 layers of width 64, intermediate 128, vocabulary 100: per layer q, k, v, output
    # (4 x 64 x 64), the feed-forward (2 x 64 x 128); the MLM head's transform (64 x 64) and its
    # decoder over the vocabulary (64 x 100, tied to the embedding: still a matmul).
    bert = BertForMaskedLM(
        BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=128, max_position_embeddings=64)
    )  # fmt: skip
    linear = 2 * (4 * 64 * 64 + 2 * 64 * 128) + 64 * 64 + 64 * 100
    assert flops_per_token(bert, 32) == 6 * linear + 12 * 2 * 64 * 32
    # Masked-LM pretraining: the head (transform + decoder) on 15% of the rows.
    head = 64 * 64 + 64 * 100
    assert flops_per_token(bert, 32, 0.15) == pytest.approx(
        6 * (linear - 0.85 * head) + 12 * 2 * 64 * 32
    )
    # Llama with grouped-query attention (k, v of 2 heads x 16) and a gated feed-forward.
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=96, tie_word_embeddings=True)
    )  # fmt: skip
    linear = 3 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 96) + 64 * 100
    assert flops_per_token(llama, 128) == 6 * linear + 12 * 3 * 64 * 128
    # GPT-2 small (its matmuls are transformers' Conv1D): 85M weights in the 12 layers and the
    # 38.6M tied head; ~0.85 GFLOPs a token at block 1024. Built on the meta device: no memory.
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        gpt2 = GPT2LMHeadModel(GPT2Config())
    linear = 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) + 768 * 50257
    assert linear == 123_532_032
    assert flops_per_token(gpt2, 1024) == 6 * linear + 12 * 12 * 768 * 1024
    assert mfu(1000.0, 1e9, 1e12, processes=2) == pytest.approx(0.5)  # 1e12 of 2e12
    assert device_peak_flops(torch.device("cpu"), None)[0] is None
    assert device_peak_flops(torch.device("cpu"), 2.0) == (2e12, "pretrain.peak_tflops")


def test_second_run_reuses_the_shards(
    clm_run: Path, tmp_path: Path, corpus: Path, shard_cache: Path
) -> None:
    first = json.loads((clm_run / "data_summary.json").read_text())
    from tailorml.recipes.pretrain import pretrain

    cfg = _cfg(_raw(tmp_path, corpus, shard_cache, "clm", train={"max_steps": 2}))
    res = pretrain(cfg)
    assert res["data"]["cache_hit"] and res["data"]["shards"] == first["shards"]


def test_resume_is_exact(tmp_path: Path, corpus: Path, shard_cache: Path) -> None:
    """MLM (random masks, BERT dropout on): stopped off the save grid, resumed, it ends with
    bit-identical weights to the uninterrupted run."""
    from tailorml.recipes.pretrain import pretrain

    def cfg(name: str) -> RunConfig:
        (tmp_path / name).mkdir()
        train = {"max_steps": 10, "eval_every_steps": 4, "save_every_steps": 4}
        return _cfg(_raw(tmp_path / name, corpus, shard_cache, "mlm", train=train))

    full = cfg("full")
    pretrain(full)
    part = cfg("part")
    with pytest.raises(KeyboardInterrupt):
        pretrain(part, stop_after_steps=6)
    assert not (Path(part.output_dir) / "eval.json").exists()
    pretrain(part, resume=True)
    assert_same_weights(full.output_dir, part.output_dir)


# ---- bad input --------------------------------------------------------------------------------
def test_config_problems_are_reported_at_once_naming_the_keys(tmp_path: Path) -> None:
    raw = {
        "pretrain": {"objective": "mlm", "corpus": [], "block_size": 1024},
        "model": {"base": "minilm", "init": {"arch": "llama", "preset": "tiny", "heads": 3}},
        "tokenizer": {"vocab_size": 50},
    }
    cfg, problems = validate_mapping(raw)
    text = "\n".join(problems)
    assert cfg is None
    assert "`pretrain.corpus` is empty" in text
    assert "Both `model.base` and `model.init` are set" in text
    assert "`model.init.arch` = 'llama' does not fit `pretrain.objective` = 'mlm'" in text
    assert "`model.init.heads` (3) does not divide `model.init.hidden` (64)" in text
    assert "`pretrain.block_size` (1024) is larger than the model's positions" in text
    assert "`tokenizer.vocab_size` = 50 is too small" in text
    _, problems = validate_mapping({"pretrain": {"objective": "clm", "corpus": ["x.txt"]}})
    assert any("`model.base` = 'minilm' is an encoder" in p for p in problems)


def test_validate_names_bad_files_and_a_block_too_long_for_the_base(tmp_path: Path) -> None:
    from tailorml.recipes.validate import validate_config

    good = _corpus(tmp_path / "good.txt", n=5)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"body": "hello"}) + "\n", encoding="utf-8")
    raw = {
        "pretrain": {
            "objective": "mlm",
            "corpus": [str(good), str(bad), str(rows), str(tmp_path / "missing.txt")],
            "block_size": 1024,
        },
        "model": {"base": "minilm"},
    }
    problems = validate_config(write_config(tmp_path, raw))
    text = "\n".join(problems)
    assert f"{bad}: not UTF-8" in text
    assert f"{rows}: no column 'text' (from `pretrain.text_column`)" in text
    assert "`pretrain.corpus[3]`" in text and "no such file" in text
    assert "`pretrain.block_size` (1024) is larger than the model's positions (512" in text
    assert len(problems) == 4, problems
    with pytest.raises(DataError, match="not UTF-8"):
        list(iter_documents(bad))
    assert expand_corpus([str(tmp_path / "*.txt")]) == [
        CorpusFile(good, 1.0, 0),  # sorted by path
        CorpusFile(bad, 1.0, 0),
    ]


def test_cli_pretrain_errors_exit_2_naming_the_key(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tailorml.cli import app

    path = write_config(tmp_path, {"pretrain": {"objective": "mlm", "corpus": []}})
    res = CliRunner().invoke(app, ["pretrain", str(path)])
    assert res.exit_code == 2 and "pretrain.corpus" in res.output
    fine = write_config(tmp_path, {"data": {"train": "x.csv"}}, "ft.yaml")
    res = CliRunner().invoke(app, ["pretrain", str(fine)])
    assert res.exit_code == 2 and "no `pretrain:` section" in res.output


@pytest.mark.slow  # two torchrun processes (~40 s on 2 cores)
def test_two_processes_match_one(tmp_path: Path, corpus: Path, shard_cache: Path) -> None:
    """`tailor pretrain --nproc 2` (gloo): replicas stay identical and the weights match a
    one-process run (CLM: the tiny Llama has no dropout, so both layouts draw nothing random)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    runs = {}
    for name, nproc in (("single", 1), ("ddp", 2)):
        raw = _raw(tmp_path / name, corpus, shard_cache, "clm", train={"max_steps": 8})
        path = write_config(tmp_path, raw, f"{name}.yaml")
        cmd = [sys.executable, "-m", "tailorml.cli", "pretrain", str(path), f"--nproc={nproc}"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = tmp_path / name / "run-clm"
    info = json.loads((runs["ddp"] / "eval.json").read_text())["train"]
    assert info["processes"] == 2 and info["replicas_identical"] is True
    a = load_file(str(runs["single"] / "model" / "model.safetensors"))
    b = load_file(str(runs["ddp"] / "model" / "model.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, f"2-process weights differ from 1-process by {worst}"
