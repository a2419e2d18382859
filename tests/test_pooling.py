"""`model.pooling`: a classifier on the mean of the token states (the packaged sentence encoder's
own pooling) or on the first token; how `auto` chooses, what the run records, and every reader
of a mean-pooled model folder (predictors, compression variants, LoRA on top of it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tailorml.config.load import validate_mapping
from tailorml.config.schema import ModelConfig
from tailorml.errors import ConfigError
from tailorml.models.base import load_tokenizer, resolve_base
from tailorml.models.classifier import build_classifier, load_classifier
from tailorml.models.pooling import POOLING_KEY, resolve_pooling, sentence_pooling
from tailorml.recipes.finetune import finetune
from tailorml.tasks.heads import HeadSpec

from .conftest import cfg_of, make_rows, tiny_config, write_csv

HEADS = [HeadSpec(name="", task="classification", labels=["a", "b", "c"], offset=0, size=3)]


def st_folder(path: Path, pooling: dict[str, bool], modules: str | None = None) -> Path:
    (path / "1_Pooling").mkdir(parents=True)
    entry = {
        "idx": 1,
        "name": "1",
        "path": "1_Pooling",
        "type": "sentence_transformers.models.Pooling",
    }
    (path / "modules.json").write_text(modules or json.dumps([entry]))
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return path


def test_auto_follows_how_the_base_was_trained(tmp_path: Path) -> None:
    from transformers import AutoConfig, BertConfig, LlamaConfig

    minilm = resolve_base("minilm")
    assert minilm is not None and sentence_pooling(minilm) == "mean"
    bert = AutoConfig.from_pretrained(str(minilm))
    # Measured level with `cls` (docs/benchmarks.md): `auto` keeps the first token, and says so.
    pooling, why = resolve_pooling("auto", minilm, bert)
    assert pooling == "cls" and "model.pooling: mean" in why
    assert resolve_pooling("mean", minilm, bert) == ("mean", "set in the config")
    # No sentence-transformers files (the random tiny base, a plain BERT folder): the first token.
    assert resolve_pooling("auto", None, BertConfig())[0] == "cls"
    assert resolve_pooling("auto", tmp_path, BertConfig())[0] == "cls"
    # A sentence encoder trained on its CLS token keeps it.
    cls_st = st_folder(tmp_path / "cls", {"pooling_mode_cls_token": True})
    assert sentence_pooling(cls_st) == "cls"
    assert resolve_pooling("auto", cls_st, BertConfig()) == (
        "cls",
        "the base's own classifier pooling (first token + pooler)",
    )
    # Unreadable sentence-transformers files are no error: the first token, as for a plain BERT.
    broken = st_folder(tmp_path / "broken", {"pooling_mode_mean_tokens": True}, "{not json")
    assert sentence_pooling(broken) is None
    # A tailorml model folder as the base keeps what it was trained with.
    flagged = BertConfig()
    setattr(flagged, POOLING_KEY, "mean")
    assert resolve_pooling("auto", None, flagged)[0] == "mean"
    # The mean is built for BERT-family encoders; a bad value names the key.
    with pytest.raises(ConfigError, match="model.pooling: mean is built for BERT"):
        resolve_pooling("mean", None, LlamaConfig())
    # A mean-trained sentence encoder of another family (`mpnet`) keeps the first token, and
    # the reason does not offer the mean it cannot have.
    from transformers import MPNetConfig

    mean_st = st_folder(tmp_path / "mean", {"pooling_mode_mean_tokens": True})
    pooling, why = resolve_pooling("auto", mean_st, MPNetConfig())
    assert pooling == "cls" and "built for BERT only, not 'mpnet'" in why
    with pytest.raises(ConfigError, match="model.pooling: 'max'"):
        resolve_pooling("max", None, BertConfig())
    cfg, problems = validate_mapping(tiny_config(tmp_path, model={"pooling": "max"}))
    assert cfg is None and any("model.pooling" in p for p in problems), problems


def test_mean_pooled_model_ignores_padding_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tok = load_tokenizer(None)
    model = build_classifier(ModelConfig(base="tiny", pooling="mean"), HEADS, tok).eval()
    assert type(model).__name__ == "MeanPooledBertForSequenceClassification"
    assert model.bert.pooler is None and getattr(model.config, POOLING_KEY) == "mean"
    texts = ["short one", "a much longer sentence that forces padding onto the first"]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        both = model(**batch).logits
        alone = model(**tok(texts[:1], return_tensors="pt")).logits
        # The mean over real tokens only: padding changes nothing.
        assert torch.allclose(both[0], alone[0], atol=1e-5)
        # Without a mask every position counts, so the padded row differs.
        unmasked = model(input_ids=batch["input_ids"]).logits
        assert not torch.allclose(unmasked[0], alone[0], atol=1e-3)
        labels = torch.tensor([0, 2])
        out = model(**batch, labels=labels)
        assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())[POOLING_KEY] == "mean"
    assert not [k for k in load_file(str(tmp_path / "m" / "model.safetensors")) if "pooler" in k]
    again = load_classifier(tmp_path / "m")
    assert type(again) is type(model)
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, both, atol=1e-6)
    # The same settings with `cls`: Hugging Face's own classifier, pooler and all.
    plain = build_classifier(ModelConfig(base="tiny", pooling="cls"), HEADS, tok)
    assert type(plain).__name__ == "BertForSequenceClassification"
    assert plain.bert.pooler is not None


@pytest.fixture(scope="module")
def mean_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("mean")
    data = {
        k: str(write_csv(tmp / f"{k}.csv", make_rows(n, seed)))
        for k, n, seed in (("train", 240, 0), ("eval", 60, 1), ("test", 60, 2))
    }
    raw = tiny_config(tmp, data=data, model={"base": "tiny", "dropout": 0.0, "pooling": "mean"})
    raw["train"]["epochs"] = 6
    finetune(cfg_of(raw))
    return tmp / "run", data


def test_mean_pooled_run_predicts_compresses_and_serves(
    mean_run: tuple[Path, dict[str, str]],
) -> None:
    from tailorml.compress.measure import all_logits
    from tailorml.compress.variants import EXPORT_ATOL
    from tailorml.config.compress import CompressOptions
    from tailorml.predictors import load_predictor
    from tailorml.recipes.compress import compress

    run, _ = mean_run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["pooling"] == "mean"
    assert "model.pooling" not in json.loads((run / "auto.json").read_text())  # set, not chosen
    ev = json.loads((run / "eval.json").read_text())
    assert ev["eval"]["accuracy"] >= 0.8, ev["eval"]  # the keyword task is learnt
    texts = [r["text"] for r in make_rows(60, 1)]
    gold = np.arange(60) % 3
    pred = load_predictor(run / "model", threads=1)
    assert float((all_logits(pred, texts).argmax(1) == gold).mean()) == pytest.approx(
        ev["eval"]["accuracy"]
    )
    variants = ["onnx-fp32", "onnx-int8", "torch-int8", "pruned", "distilled", "trimmed"]
    fast = {"repeats": 1, "latency_texts": 20, "recovery_epochs": 1, "distill_epochs": 2}
    compress(run, CompressOptions(variants=variants, budget=100.0, **fast))  # type: ignore[arg-type]
    by = {v["name"]: v for v in json.loads((run / "compression.json").read_text())}
    assert by["onnx-fp32"]["max_abs_logit_diff"] <= EXPORT_ATOL
    assert abs(by["onnx-fp32"]["accuracy"] - by["fp32"]["accuracy"]) < 1e-9
    for name in variants:
        folder = run / "compressed" / name
        logits = all_logits(load_predictor(folder, threads=1), texts)
        assert float((logits.argmax(1) == gold).mean()) == pytest.approx(by[name]["accuracy"]), name
        if (folder / "config.json").is_file():  # torch folders keep the flag for their loaders
            assert json.loads((folder / "config.json").read_text())[POOLING_KEY] == "mean", name


def test_lora_on_a_mean_pooled_folder_keeps_its_pooling(
    mean_run: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    run, data = mean_run
    raw = tiny_config(
        tmp_path,
        data=data,
        model={"base": str(run / "model"), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
    )
    raw["train"].update(epochs=1, lr=1e-2)
    finetune(cfg_of(raw))
    chosen = json.loads((tmp_path / "run" / "auto.json").read_text())
    assert chosen["model.pooling"] == {
        "value": "mean",
        "why": "the base model folder was trained with mean pooling",
    }
    merged = load_classifier(tmp_path / "run" / "model")
    assert type(merged).__name__ == "MeanPooledBertForSequenceClassification"
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ev["eval"]["accuracy"] >= 0.8, ev["eval"]  # started from the trained mean-pooled model
