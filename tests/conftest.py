"""Shared fixtures: small synthetic datasets and tiny-model configs (fast, no weights needed)."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

POS = ["great", "excellent", "strong", "beat", "rally", "upgrade", "record", "gain"]
NEG = ["terrible", "weak", "miss", "crash", "downgrade", "loss", "plunge", "cut"]
NEU = ["meeting", "report", "schedule", "update", "announces", "conference", "filing", "notes"]
FILL = ["the", "company", "shares", "today", "market", "quarter", "said", "on", "its", "stock"]


def make_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Short texts whose label is given by one keyword: learnable by a tiny model in seconds."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["negative", "neutral", "positive"][i % 3]
        word = rng.choice({"negative": NEG, "neutral": NEU, "positive": POS}[label])
        words = [rng.choice(FILL) for _ in range(rng.randint(2, 14))]
        words.insert(rng.randint(0, len(words)), word)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_config(tmp: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "test",
        "output_dir": str(tmp / "run"),
        "data": {"max_length": 32},
        "model": {"base": "tiny", "dropout": 0.0},
        "task": {"type": "classification"},
        "train": {
            "epochs": 10,
            "batch_size": 16,
            "lr": 3e-3,
            "seed": 0,
            "threads": 1,
            "log_every_steps": 5,
            # Tests compare figures exactly; `auto` would train in bf16 on a CPU with AMX or
            # AVX-512 BF16 and round differently. The bf16 path has tests of its own.
            "precision": "fp32",
        },
    }
    for key, val in sections.items():
        if isinstance(val, dict):
            cfg.setdefault(key, {}).update(val)
        else:
            cfg[key] = val
    return cfg


def cfg_of(raw: dict[str, Any]) -> Any:
    """The validated RunConfig of a raw config dict (fails the test on any problem)."""
    from tailorml.config.load import validate_mapping

    cfg, problems = validate_mapping(raw)
    assert cfg is not None, problems
    return cfg


def write_config(tmp: Path, cfg: dict[str, Any], name: str = "cfg.yaml") -> Path:
    import yaml

    path = tmp / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture()
def cls_data(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_csv(tmp_path / "train.csv", make_rows(240, 0)),
        "eval": write_csv(tmp_path / "eval.csv", make_rows(60, 1)),
        "test": write_csv(tmp_path / "test.csv", make_rows(60, 2)),
    }


@pytest.fixture()
def cls_config(tmp_path: Path, cls_data: dict[str, Path]) -> dict[str, Any]:
    return tiny_config(
        tmp_path,
        data={
            "train": str(cls_data["train"]),
            "eval": str(cls_data["eval"]),
            "test": str(cls_data["test"]),
        },
    )


def assert_same_weights(run_a: Path | str, run_b: Path | str) -> None:
    """The two runs' saved models hold bit-identical tensors."""
    import torch
    from safetensors.torch import load_file

    a = load_file(str(Path(run_a) / "model" / "model.safetensors"))
    b = load_file(str(Path(run_b) / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="session", autouse=True)
def _tailorml_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Converted packaged models (the SmolLM2 tokenizer the tiny causal LM borrows, converted
    from the GGUF once, ~10 s) go to one folder per test session, not the user's cache; an
    exported TAILORML_CACHE_DIR wins (to reuse a converted SmolLM2 across sessions)."""
    if "TAILORML_CACHE_DIR" not in os.environ:
        os.environ["TAILORML_CACHE_DIR"] = str(tmp_path_factory.mktemp("tailorml-cache"))
    yield
