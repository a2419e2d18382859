"""Two CPU processes (torchrun + gloo) train one config: gradients really synchronise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from .conftest import REPO, tiny_config, write_config

CLI = [sys.executable, "-m", "tailorml.cli"]


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run in a new process group, killed whole on timeout (torchrun leaves workers otherwise)."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out: {cmd}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_two_processes_match_one(tmp_path: Path, cls_data: dict[str, Path]) -> None:
    paths = {}
    for name in ("single", "ddp"):
        raw = tiny_config(
            tmp_path / name,
            data={k: str(v) for k, v in cls_data.items()},
        )
        # dropout off: the two layouts draw different dropout masks otherwise.
        raw["train"].update(epochs=1, threads=1, eval_every_steps=5)
        paths[name] = write_config(tmp_path, raw, f"{name}.yaml")
    single = run([*CLI, "finetune", str(paths["single"])])
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "tailorml.cli",
            "finetune",
            str(paths["ddp"]),
        ]
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    info = json.loads((tmp_path / "ddp" / "run" / "eval.json").read_text())["train"]
    assert info["processes"] == 2
    # Every rank ends with exactly rank 0's weights.
    assert info["replicas_identical"] is True and info["max_replica_param_diff"] == 0.0
    a = load_file(str(tmp_path / "single" / "run" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "run" / "model" / "model.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float((a[k] - b[k]).abs().max()) for k in a if "classifier" in k)
    assert worst < 1e-3, f"2-process weights differ from 1-process by {worst}"
    assert moved < 1e-3


@pytest.mark.slow  # the same 2-process run as above, through `--nproc`; also run by the docs test
def test_tailor_nproc_launcher(tmp_path: Path, cls_data: dict[str, Path]) -> None:
    raw = tiny_config(tmp_path, data={k: str(v) for k, v in cls_data.items()})
    raw["train"].update(max_steps=4)
    path = write_config(tmp_path, raw)
    res = run([*CLI, "finetune", str(path), "--nproc", "2"])
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((tmp_path / "run" / "eval.json").read_text())["train"]
    assert info["processes"] == 2 and info["replicas_identical"]
