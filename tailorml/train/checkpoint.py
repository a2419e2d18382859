"""Checkpoints that make resume exact: model, optimizer, scheduler, RNG state and loop position.

Everything is loaded without unpickling code: weights through safetensors, optimizer/scheduler/RNG
state through ``torch.load(..., weights_only=True)``, loop position as JSON. Each checkpoint is
written to a temporary folder and renamed into place, so a crash never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

STEP_RE = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(
        tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"]
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    rank_rng: list[dict[str, Any]],
) -> None:
    """Write `folder` atomically. `model` is the unwrapped transformers model."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)  # a LoRA model: its adapter only
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for rank, state in enumerate(rank_rng):
        torch.save(state, tmp / f"rng_state_{rank}.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def load_weights(folder: Path, model: Any) -> None:
    """A checkpoint's weights into `model`: the whole model, or a LoRA model's adapter (the frozen
    base is rebuilt the same way each time, so only what was trained is saved)."""
    from safetensors.torch import load_file

    from tailorml.models.lora import ADAPTER_WEIGHTS, load_adapter_weights

    if (folder / ADAPTER_WEIGHTS).is_file():
        load_adapter_weights(model, folder)
        return
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied or buffer-only keys may be absent from safetensors; real weights must not be.
    real_missing = [k for k in untied(model, missing) if "position_ids" not in k]
    if real_missing or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: {real_missing[:5]}")


def load_checkpoint(
    folder: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int
) -> dict[str, Any]:
    load_weights(folder, model)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng_file = folder / f"rng_state_{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return dict(json.loads((folder / "trainer_state.json").read_text(encoding="utf-8")))


def untied(model: Any, missing: list[str]) -> list[str]:
    """The `missing` keys that are not tied to a loaded one: safetensors stores a tensor shared
    by two names once (a causal LM's output layer is its input embedding)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[k].data_ptr() for k in params if k not in missing}
    return [k for k in missing if k not in params or params[k].data_ptr() not in loaded]


def load_latest_intact(
    ckpt_dir: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int
) -> tuple[Path, dict[str, Any], list[tuple[Path, str]]] | None:
    """Load the newest checkpoint that reads whole; older ones are tried when a newer one is
    damaged (a crash while writing it, a full disk, a truncated copy). Returns (folder, trainer
    state, [(damaged folder, why)]) or None when there is no checkpoint at all; raises
    ConfigError naming every damaged one when none is intact."""
    from tailorml.errors import ConfigError

    found = list_checkpoints(ckpt_dir)
    if not found:
        return None
    damaged: list[tuple[Path, str]] = []
    for _, folder in reversed(found):
        try:
            # Every later load fully replaces what a failed attempt may have set.
            return folder, load_checkpoint(folder, model, optimizer, scheduler, rank), damaged
        except Exception as exc:  # a damaged file fails in many libraries' own ways
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            damaged.append((folder, why))
    listed = "; ".join(f"{f.name} ({why})" for f, why in damaged)
    raise ConfigError(
        f"--resume: no checkpoint in {ckpt_dir} can be read: {listed}. Start again with "
        "--overwrite, or restore the checkpoints folder from a backup."
    )


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    for _, path in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
