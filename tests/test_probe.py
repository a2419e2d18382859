"""`model.head_init: probe`: the output layer fitted on the frozen encoder's features before
fine-tuning (LP-FT); when `auto` chooses it, what the run records, multi-task columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tailorml.errors import ConfigError
from tailorml.recipes.finetune import finetune
from tailorml.train.probe import L2_GRID, fit_linear, resolve_head_init

from .conftest import cfg_of, make_rows, tiny_config, write_csv
from .test_multitask import mt_config


def test_auto_probes_a_pretrained_encoder_only() -> None:
    assert resolve_head_init("auto", pretrained=True, lora=False, distill=False)[0] == "probe"
    assert resolve_head_init("auto", pretrained=False, lora=False, distill=False)[0] == "random"
    assert resolve_head_init("auto", pretrained=True, lora=True, distill=False)[0] == "random"
    assert resolve_head_init("auto", pretrained=True, lora=False, distill=True)[0] == "random"
    assert resolve_head_init("probe", pretrained=False, lora=False, distill=False) == (
        "probe",
        "set in the config",
    )
    with pytest.raises(ConfigError, match="model.head_init: probe is for full fine-tuning"):
        resolve_head_init("probe", pretrained=True, lora=True, distill=False)


def test_fit_linear_separates_what_is_separable_and_l2_shrinks_it() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 3
    y = torch.arange(400) % 4
    x = centres[y] + torch.randn(400, 16, generator=gen)
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    w, b = fit_linear(x, y, 4, 1e-4, loss)
    assert float(((x @ w.T + b).argmax(1) == y).float().mean()) >= 0.97
    strong, _ = fit_linear(x, y, 4, 1.0, loss)
    assert strong.norm() < 0.5 * w.norm()


def probe_run(tmp: Path, head_init: str) -> dict[str, Any]:
    tmp.mkdir()
    data = {
        k: str(write_csv(tmp / f"{k}.csv", make_rows(n, seed)))
        for k, n, seed in (("train", 240, 0), ("eval", 60, 1), ("test", 60, 2))
    }
    model = {"base": "tiny", "pooling": "mean", "head_init": head_init, "tiny_hidden_size": 64}
    raw = tiny_config(tmp, data=data, model=model)
    # One step at a vanishing rate: what is scored is the output layer the run started from.
    # (`max_steps` with no `epochs`: the epoch count is not needed.)
    raw["train"].update(max_steps=1, lr=1e-9)
    raw["train"].pop("epochs")
    return finetune(cfg_of(raw))


def test_probe_starts_fine_tuning_from_a_fitted_output_layer(tmp_path: Path) -> None:
    probed = probe_run(tmp_path / "p", "probe")
    random = probe_run(tmp_path / "r", "random")
    # Mean-pooled states of even a random encoder are a bag of words: a linear layer fitted on
    # them finds the keyword; a random one scores about chance.
    assert probed["eval"]["accuracy"] >= 0.7, probed["eval"]
    assert random["eval"]["accuracy"] <= 0.5, random["eval"]
    info = json.loads((tmp_path / "p" / "run" / "probe.json").read_text())
    assert info["heads"]["head"]["l2"] in L2_GRID and info["seconds"] >= 0
    assert not (tmp_path / "r" / "run" / "probe.json").exists()


def test_probe_fits_each_head_of_a_multitask_model_in_its_own_columns(tmp_path: Path) -> None:
    raw = mt_config(tmp_path)
    raw["model"].update(pooling="mean", head_init="probe", tiny_hidden_size=64)
    raw["train"].update(max_steps=1, lr=1e-9)
    raw["train"].pop("epochs")
    res = finetune(cfg_of(raw))
    info = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert set(info["heads"]) == {"sentiment", "topic"}
    for head in ("sentiment", "topic"):
        assert res["eval"]["heads"][head]["accuracy"] >= 0.6, res["eval"]["heads"][head]
