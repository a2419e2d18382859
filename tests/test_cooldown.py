"""The cool-down after early stopping (train.cooldown): back to the best checkpoint, the learning
rate annealed from its value there to 0, the best of both phases kept, resume exact inside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tailorml.recipes.finetune import finetune
from tailorml.train.optim import WarmupDecay

from .conftest import assert_same_weights, cfg_of, tiny_config


def test_schedule_cools_down_linearly_and_saves_it() -> None:
    fn = WarmupDecay(warmup=10, total=100, kind="linear")
    at_40 = fn(40)
    fn.cool_down(60, 20, at_40)
    assert fn(59) == pytest.approx(1 - 49 / 90)  # before the cool-down: the old schedule
    assert fn(60) == pytest.approx(at_40)
    assert fn(70) == pytest.approx(at_40 / 2)
    assert fn(80) == 0.0 and fn(95) == 0.0
    # LambdaLR keeps a callable object's attributes in its state: a resumed run cools down too
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    fresh = WarmupDecay(warmup=10, total=100, kind="linear")
    other = torch.optim.lr_scheduler.LambdaLR(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), fresh
    )
    other.load_state_dict(sched.state_dict())
    assert fresh(70) == pytest.approx(at_40 / 2)


def raw_config(tmp: Path, data: dict[str, Path], name: str, cooldown: bool) -> dict[str, Any]:
    raw = tiny_config(
        tmp / name,
        data={k: str(v) for k, v in data.items()},
        model={"base": "tiny", "dropout": 0.1},  # dropout on: the RNG state matters on resume
    )
    # The keyword task reaches eval accuracy 1.0 early; a tie is no improvement, so patience 2
    # on the metric alone always stops the run, long before its 10 epochs.
    raw["train"].update(
        epochs=10,
        eval_every_steps=15,
        save_every_steps=15,
        early_stopping_patience=2,
        early_stopping_loss_drop=None,
        metric_for_best="accuracy",
        cooldown=cooldown,
    )
    return raw


def finetune_results(out: str) -> dict[str, Any]:
    return dict(json.loads((Path(out) / "eval.json").read_text()))


def drop_time(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time"} for r in found]


def rows(out: str, split: str) -> list[dict[str, Any]]:
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_cooldown_goes_back_to_the_best_and_anneals(
    tmp_path: Path, cls_data: dict[str, Path]
) -> None:
    plain = cfg_of(raw_config(tmp_path, cls_data, "plain", cooldown=False))
    res_plain = finetune(plain)
    stop = res_plain["train"]["steps"]
    assert res_plain["train"]["stopped_by"] == "early stopping" and stop < 150

    cool = cfg_of(raw_config(tmp_path, cls_data, "cool", cooldown=True))
    res = finetune(cool)
    state = res["train"]
    best_before = res_plain["train"]["best_step"]
    # the same run up to the stop, then as many steps as patience waited (2 evaluations of 15)
    assert state["cooldown_start"] == stop
    assert res["train"]["steps"] == stop + 30
    assert state["stopped_by"] == "early stopping, then a cool-down"
    assert state["best_before_cooldown"] == res_plain["eval"]["accuracy"]
    lrs = {r["step"]: r["lr"] for r in rows(cool.output_dir, "train")}
    plain_lrs = {r["step"]: r["lr"] for r in rows(plain.output_dir, "train")}
    assert all(lrs[s] == pytest.approx(plain_lrs[s]) for s in plain_lrs)
    # from the learning rate of the best step down to 0 at the last step
    lr_best = cool.train.lr * WarmupDecay(int(0.06 * 150), 150, "linear")(best_before)
    assert lrs[stop + 15] == pytest.approx(lr_best / 2, rel=1e-6)
    assert lrs[stop + 30] == pytest.approx(0.0, abs=1e-12)
    evals = [r["step"] for r in rows(cool.output_dir, "eval")]
    assert stop + 15 in evals and stop + 30 in evals
    # the best of both phases is what the run folder holds
    assert res["eval"]["accuracy"] >= res_plain["eval"]["accuracy"]


def test_resume_inside_the_cooldown_is_exact(tmp_path: Path, cls_data: dict[str, Path]) -> None:
    full = cfg_of(raw_config(tmp_path, cls_data, "full", cooldown=True))
    finetune(full)
    start = finetune_results(full.output_dir)["train"]["cooldown_start"]
    part = cfg_of(raw_config(tmp_path, cls_data, "part", cooldown=True))
    with pytest.raises(KeyboardInterrupt):
        finetune(part, stop_after_steps=start + 3)
    finetune(part, resume=True)
    assert_same_weights(full.output_dir, part.output_dir)
    assert drop_time(rows(full.output_dir, "eval")) == drop_time(rows(part.output_dir, "eval"))


def test_a_falling_eval_loss_keeps_the_run_going(tmp_path: Path, cls_data: dict[str, Path]) -> None:
    """Early stopping counts an evaluation as progress when the metric improves or the eval loss
    falls 1% under its lowest (`early_stopping_loss_drop`); the best checkpoint is the metric's,
    a tie going to the lower eval loss. The keyword task ties at accuracy 1.0 while its loss keeps
    falling."""
    raw = raw_config(tmp_path, cls_data, "metric-only", cooldown=False)
    metric_only = finetune(cfg_of(raw))
    raw = raw_config(tmp_path, cls_data, "with-loss", cooldown=False)
    raw["train"]["early_stopping_loss_drop"] = 0.01
    cfg = cfg_of(raw)
    res = finetune(cfg)
    assert res["train"]["steps"] > metric_only["train"]["steps"]
    # The best checkpoint: the top accuracy, and among evaluations tied there the lowest loss
    # (the tie at 1.0 goes to a later checkpoint, not to the first to reach it).
    evals = rows(cfg.output_dir, "eval")
    top = max(r["accuracy"] for r in evals)
    chosen = min((r for r in evals if r["accuracy"] == top), key=lambda r: r["loss"])
    assert res["train"]["best_step"] == chosen["step"] > metric_only["train"]["best_step"]
    # the rule, read back from the logged evaluations: progress resets the count, patience 2
    best_acc, best_loss, waited = -1.0, float("inf"), 0
    for r in rows(cfg.output_dir, "eval"):
        assert waited < 2, "the run went on past patience"
        progress = r["accuracy"] > best_acc or r["loss"] < 0.99 * best_loss
        best_acc = max(best_acc, r["accuracy"])
        best_loss = r["loss"] if r["loss"] < 0.99 * best_loss else best_loss
        waited = 0 if progress else waited + 1
    assert waited == 2 or res["train"]["stopped_by"] == "max steps"
    assert res["train"]["stopped_by"] == ("early stopping" if waited == 2 else "max steps")
