"""benchmarks/recbole_runner.py continues a killed RecBole run where it stopped.

Needs the RecBole environment (`make recbole-venv`); slow (two short SASRec trainings).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECBOLE_PY = REPO / ".venv-recbole/bin/python"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not RECBOLE_PY.is_file(), reason="no .venv-recbole (make recbole-venv)"),
]


def atomic(tmp: Path) -> Path:
    """The MovieLens split of the first 40 users as RecBole atomic files."""
    out = tmp / "vs"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks/recommend_vs_recbole.py"), "--only", "recbole"]
        + ["--models", "Pop", "--limit-users", "40", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out / "atomic"


def runner(data: Path, out: Path) -> list[str]:
    return [
        str(RECBOLE_PY),
        str(REPO / "benchmarks/recbole_runner.py"),
        "--data-path",
        str(data),
        "--dataset",
        "ml",
        "--model",
        "SASRec",
        "--out",
        str(out),
        "--epochs",
        "4",
        "--threads",
        "1",
        "--set",
        "train_batch_size=256",
    ]


def test_a_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    data = atomic(tmp_path)
    whole = tmp_path / "whole" / "SASRec.json"
    whole.parent.mkdir()
    subprocess.run(runner(data, whole), check=True, capture_output=True)
    a = json.loads(whole.read_text())
    assert a["resumed_at_epochs"] == [] and len(a["valid_curve_ndcg@10"]) == 4

    cut = tmp_path / "cut" / "SASRec.json"
    cut.parent.mkdir()
    state = cut.parent / "work-SASRec" / "resume.pt"
    proc = subprocess.Popen(runner(data, cut), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: list[float] = []
    deadline = time.time() + 600
    while len(set(seen)) < 2 and proc.poll() is None and time.time() < deadline:
        if state.is_file():  # wait for the state of the second epoch, then kill
            seen.append(state.stat().st_mtime)
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.is_file() and not cut.exists()

    done = subprocess.run(runner(data, cut), check=True, capture_output=True, text=True)
    assert "resumed from" in done.stderr
    b = json.loads(cut.read_text())
    assert b["resumed_at_epochs"] and b["resumed_at_epochs"][0] >= 1
    assert not state.exists()  # removed once the run ended
    # the same trajectory: the data order, dropout and optimizer state were all restored
    assert b["valid_curve_ndcg@10"] == a["valid_curve_ndcg@10"]
    assert b["best_epoch"] == a["best_epoch"]
    assert b["test_recbole"] == pytest.approx(a["test_recbole"], abs=1e-6)
    assert b["test_ranks"] == a["test_ranks"]
