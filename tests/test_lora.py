"""LoRA fine-tuning (`model.lora`): adapters + head trained, base frozen; the run folder holds the
adapter and loads (base + adapter, merged) wherever a model folder is read; `tailor merge`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tailorml.config.load import validate_mapping
from tailorml.errors import ConfigError
from tailorml.recipes.finetune import finetune

from .conftest import REPO, cfg_of, make_rows, tiny_config, write_csv
from .serve_helpers import ThreadServer
from .test_multitask import mt_config

TEXTS = ["the company shares beat today", "terrible loss on its stock", "meeting schedule notes"]
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}


def lora_raw(tmp: Path, data: dict[str, Path], **lora: Any) -> dict[str, Any]:
    raw = tiny_config(
        tmp,
        data={k: str(v) for k, v in data.items()},
        model={"base": "tiny", "dropout": 0.0, "lora": {**LORA, **lora}},
    )
    raw["train"].update(epochs=6, lr=1e-2)  # LoRA takes a larger step than full fine-tuning
    return raw


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    """LoRA on a pretrained base, as in real use: the base is a tiny encoder fully fine-tuned on
    other rows of the keyword task (a random tiny encoder, frozen, gives LoRA little to adapt:
    measured, it stays near chance for 6 epochs where full fine-tuning reaches 0.8)."""
    tmp = tmp_path_factory.mktemp("lora")
    data = {
        "train": write_csv(tmp / "train.csv", make_rows(240, 0)),
        "eval": write_csv(tmp / "eval.csv", make_rows(60, 1)),
        "test": write_csv(tmp / "test.csv", make_rows(60, 2)),
    }
    pre = tiny_config(
        tmp / "pre", data={"train": str(write_csv(tmp / "pre.csv", make_rows(240, 5)))}
    )
    finetune(cfg_of(pre))
    raw = lora_raw(tmp, data)
    raw["model"]["base"] = str(tmp / "pre" / "run" / "model")
    raw["train"].update(epochs=3)
    cfg = cfg_of(raw)
    results = finetune(cfg)
    return Path(cfg.output_dir), results, data["test"]


def test_lora_trains_adapters_and_head_only(lora_run: tuple[Path, dict[str, Any], Path]) -> None:
    run, results, _ = lora_run
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    # Learned: well under the loss of a model that knows nothing (ln 3 for 3 classes). Not
    # "last < first": at lr 1e-2 the fresh head learns within the first 5-step log window.
    assert max(losses[-3:]) < 0.75 * math.log(3), losses
    assert results["test"]["accuracy"] > 0.6, results["test"]  # 3 classes: chance is 1/3

    # The model folder: the adapter with the head, config.json, tokenizer; the base is named.
    model = run / "model"
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.json", "task.json"):
        assert (model / name).is_file(), name
    assert not (model / "model.safetensors").exists() and not (model / "README.md").exists()
    base_dir = Path(json.loads((model / "task.json").read_text())["lora_base"])
    assert base_dir == (run.parent / "pre" / "run" / "model").resolve()
    adapter = load_file(str(model / "adapter_model.safetensors"))
    assert any("classifier" in k for k in adapter), "the head is saved with the adapter"
    assert all("lora_" in k or "classifier" in k for k in adapter), list(adapter)[:5]

    # Parameters and memory, in eval.json and report.md.
    tr = results["train"]
    assert 0 < tr["trainable_params"] < 0.05 * tr["total_params"], tr
    assert tr["trainable_params"] == sum(v.numel() for v in adapter.values())
    assert tr["peak_memory_mb"] > 50 and tr["peak_memory_kind"] == "max RSS"
    assert "trained of" in (run / "report.md").read_text()

    # Merged = base + low-rank updates: only the adapted Linear weights and the head moved;
    # embeddings, LayerNorms and biases are the base's.
    from tailorml.models.classifier import load_classifier

    base = load_file(str(base_dir / "model.safetensors"))
    merged = load_classifier(model).state_dict()
    body = [k for k in base if not k.startswith("classifier")]
    moved = {k for k in body if not torch.equal(merged[k], base[k])}
    assert moved and all(k.endswith(".weight") and "LayerNorm" not in k for k in moved), moved
    assert not any("embeddings" in k for k in moved)
    adapted = {k.split("base_model.model.")[-1].replace(".lora_A", "") for k in adapter}
    assert moved == {k for k in adapted if "lora_B" not in k and "classifier" not in k}, moved
    assert not torch.equal(merged["classifier.weight"], base["classifier.weight"])


def test_lora_folder_predicts_evaluates_serves_merges_and_compresses(
    lora_run: tuple[Path, dict[str, Any], Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification
    from typer.testing import CliRunner

    from tailorml.cli import app
    from tailorml.predictors import load_predictor
    from tailorml.recipes.evaluate import evaluate_file
    from tailorml.recipes.predict import predict_rows

    run, results, test_file = lora_run
    pred = load_predictor(run, threads=1)
    logits = pred.predict(TEXTS)
    assert logits.shape == (3, 3)
    assert [p["input"] for p in predict_rows(run, [{"text": t} for t in TEXTS])] == TEXTS

    # evaluate reloads the folder: the metrics the trained model reported on the same file.
    metrics = evaluate_file(run, test_file)
    for m in ("accuracy", "macro_f1"):
        assert metrics[m] == pytest.approx(results["test"][m], abs=1e-6), m

    with ThreadServer(pred) as srv:
        r = httpx.post(srv.url + "/v1/predict", json={"inputs": TEXTS[:2]}, timeout=30)
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == [
        p["label"] for p in pred.api_outputs(logits[:2])
    ]

    # tailor merge: a plain folder that transformers loads, with the same logits.
    out = tmp_path / "merged"
    res = CliRunner().invoke(app, ["merge", str(run), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert {"config.json", "model.safetensors", "task.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    assert "lora_base" not in json.loads((out / "task.json").read_text())
    plain = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.inference_mode():
        enc = {k: torch.from_numpy(v) for k, v in pred.encode(TEXTS).items()}
        np.testing.assert_allclose(plain(**enc).logits.numpy(), logits, atol=1e-5)
    np.testing.assert_allclose(load_predictor(out, threads=1).predict(TEXTS), logits, atol=1e-5)
    # The default output folder is RUN/merged; a plain folder is refused with the reason.
    res = CliRunner().invoke(app, ["merge", str(run)])
    assert res.exit_code == 0 and (run / "merged" / "model.safetensors").is_file(), res.output
    res = CliRunner().invoke(app, ["merge", str(run / "merged")])
    assert res.exit_code == 2 and "not a LoRA run" in res.output, res.output

    # compress reads the LoRA run like any other (its variants are plain, merged models).
    from tailorml.config.compress import CompressOptions
    from tailorml.recipes.compress import compress

    comp = compress(
        run, CompressOptions(variants=["torch-int8"], repeats=1, latency_texts=4, threads=1)
    )
    int8 = {v["name"]: v for v in comp["variants"]}["torch-int8"]
    assert int8["agreement"] >= 0.9, int8
    assert "lora_base" not in json.loads((run / "compressed/torch-int8/task.json").read_text())


RELOAD = """
import json, sys
from tailorml.predictors import load_predictor
print(json.dumps(load_predictor(sys.argv[1], threads=1).predict(json.loads(sys.argv[2])).tolist()))
"""


def test_reload_in_a_fresh_process_gives_the_trained_models_logits(tmp_path: Path) -> None:
    """The model in memory after training and the folder loaded by another process answer the
    same: the head is in the adapter, the base is found again, the merge changes nothing."""
    from tailorml import env
    from tailorml.models import build_model
    from tailorml.models.base import load_tokenizer
    from tailorml.models.lora import task_fields
    from tailorml.recipes.finetune import read_heads
    from tailorml.tasks.heads import task_json
    from tailorml.train.run_folder import save_model_folder

    data = {"train": write_csv(tmp_path / "train.csv", make_rows(60, 0))}
    cfg = cfg_of(lora_raw(tmp_path, data))
    heads, _ = read_heads(cfg)
    env.seed_everything(0)
    tok = load_tokenizer(None)
    model = build_model(cfg.model, heads, tok)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    for _ in range(5):  # move the adapters (lora_B starts at zero) and the head
        loss = model(**enc, labels=torch.tensor([2, 0, 1])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.inference_mode():
        want = model(**enc).logits.numpy()
    folder = save_model_folder(
        tmp_path, model, tok, task_json(heads, "tiny", task_fields(cfg.model))
    )
    res = subprocess.run(
        [sys.executable, "-c", RELOAD, str(folder), json.dumps(TEXTS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = np.array(json.loads(res.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A head left out of the adapter would make the reloaded logits those of a random head.
    assert np.abs(want).max() > 0.1


def test_lora_resume_is_exact(tmp_path: Path) -> None:
    data = {
        "train": write_csv(tmp_path / "train.csv", make_rows(240, 0)),
        "eval": write_csv(tmp_path / "eval.csv", make_rows(60, 1)),
        "test": write_csv(tmp_path / "test.csv", make_rows(60, 2)),
    }

    def raw(name: str) -> dict[str, Any]:
        r = lora_raw(tmp_path / name, data, dropout=0.1)  # LoRA dropout: RNG state must resume
        r["train"].update(epochs=2, eval_every_steps=7, save_every_steps=7)
        return r

    full = cfg_of(raw("full"))
    finetune(full)
    part = cfg_of(raw("part"))
    with pytest.raises(KeyboardInterrupt):
        finetune(part, stop_after_steps=11)
    ckpt = Path(part.output_dir) / "checkpoints" / "step-11"
    assert (ckpt / "adapter_model.safetensors").is_file()
    assert not (ckpt / "model.safetensors").exists(), "a LoRA checkpoint holds the adapter only"
    finetune(part, resume=True)
    for name in ("adapter_model.safetensors", "base/model.safetensors"):
        a = load_file(str(Path(full.output_dir) / "model" / name))
        b = load_file(str(Path(part.output_dir) / "model" / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_multitask_lora_run(tmp_path: Path) -> None:
    from tailorml.predictors import load_predictor

    raw = mt_config(tmp_path, epochs=3, lr=1e-2)
    raw["model"]["lora"] = LORA
    cfg = cfg_of(raw)
    results = finetune(cfg)
    pred = load_predictor(cfg.output_dir, threads=1)
    assert [h.name for h in pred.heads] == ["sentiment", "topic"]
    out = pred.format(pred.predict(TEXTS))
    assert set(out[0]["heads"]) == {"sentiment", "topic"}
    assert results["train"]["trainable_params"] < results["train"]["total_params"] / 10


@pytest.mark.parametrize(
    "lora,expect",
    [
        ({"target_modules": ["query", "qkv_proj"]}, r"`model.lora.target_modules`: \['qkv_proj'\]"),
        ({"target_modules": ["classifier"]}, "outside its head"),
    ],
)
def test_bad_target_modules_leave_no_run(tmp_path: Path, lora: dict[str, Any], expect: str) -> None:
    data = {"train": write_csv(tmp_path / "train.csv", make_rows(60, 0))}
    raw = lora_raw(tmp_path, data, **lora)
    with pytest.raises(ConfigError, match=expect) as err:
        finetune(cfg_of(raw))
    assert "query" in str(err.value) and "target_modules: null" in str(err.value)
    assert not Path(raw["output_dir"]).exists()


def test_bad_lora_settings_name_the_field(tmp_path: Path, lora_run: Any) -> None:
    raw = tiny_config(tmp_path, data={"train": "x.csv"}, model={"lora": {"r": 0, "alpha": 16}})
    _, problems = validate_mapping(raw)
    assert any(p.startswith("`model.lora.r` = 0") for p in problems), problems
    raw["model"]["lora"] = {"rank": 4}
    _, problems = validate_mapping(raw)
    assert any("Unknown key `model.lora.rank`" in p for p in problems), problems
    # A LoRA folder is not a base to train on: merge it first.
    from tailorml.models.base import resolve_base

    run = lora_run[0]
    with pytest.raises(ConfigError, match="tailor merge"):
        resolve_base(str(run / "model"))


def test_validate_reports_a_bad_target_with_the_other_problems(tmp_path: Path) -> None:
    from tailorml.recipes.validate import validate_config

    from .conftest import write_config

    data = {"train": write_csv(tmp_path / "train.csv", make_rows(30, 0))}
    raw = lora_raw(tmp_path, data, target_modules=["value", "v_proj"])
    raw["train"]["metric_for_best"] = "bleu"
    problems = validate_config(write_config(tmp_path, raw))
    assert any("metric_for_best" in p for p in problems), problems
    assert any("`model.lora.target_modules`: ['v_proj']" in p for p in problems), problems
    raw["model"]["lora"]["target_modules"] = ["value"]
    raw["train"].pop("metric_for_best")
    assert validate_config(write_config(tmp_path, raw)) == []


def test_left_out_lr_is_chosen_for_lora() -> None:
    """LoRA takes larger steps: the chosen rate is the measured one for MiniLM (3e-3, against
    1e-4 for full fine-tuning); a rate the config sets wins."""
    from tailorml.config.schema import TrainConfig
    from tailorml.train import auto

    t, chosen = auto.resolve(TrainConfig(), steps_per_epoch=100, hidden=384, lora=True)
    assert t.lr == 3e-3 and "LoRA" in chosen["train.lr"]["why"]
    assert auto.resolve(TrainConfig(), 100, 384)[0].lr == 1e-4
    assert auto.resolve(TrainConfig(lr=5e-4), 100, 384, lora=True)[0].lr == 5e-4
