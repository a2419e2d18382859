"""The README's promises: two commands on a fresh machine; every `tailor` verb it shows exists."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from .conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_the_two_commands() -> None:
    head = README[:1200]
    assert "make demo" in head and "make test" in head
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_tailor_verb_in_the_readme_exists() -> None:
    verbs = set(re.findall(r"(?m)(?:^|\|\s*|\$ )tailor ([a-z][a-z-]+)", README))
    assert {"finetune", "evaluate", "predict", "validate"} <= verbs
    for verb in sorted(verbs):
        res = subprocess.run(
            [str(REPO / ".venv/bin/python"), "-m", "tailorml.cli", verb, "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, f"`tailor {verb}` in README but: {res.stderr[-500:]}"


def test_make_demo_runs_end_to_end(tmp_path: Path) -> None:
    """`make demo` itself, on the tiny config (the full quick-start takes minutes, not seconds)."""
    out = tmp_path / "demo"
    res = subprocess.run(
        [
            "make",
            "demo",
            "DEMO_CONFIG=configs/tiny.yaml",
            f"DEMO_OVERRIDES=output_dir={out}",
            f"DEMO_RUN={out}",
            "COMPRESS_OPTS=--variants onnx-int8 --repeats 1 --latency-texts 8",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Results" in res.stderr
    results = json.loads((out / "eval.json").read_text())
    assert 0.0 <= results["eval"]["accuracy"] <= 1.0
    assert (out / "report.md").is_file()
    assert (out / "compression.json").is_file() and (out / "compressed" / "onnx-int8").is_dir()
