"""The README's promises: two commands on a fresh machine; every `tailor` verb it shows exists."""

from __future__ import annotations

import re
import subprocess

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


# `make demo` itself (on the tiny config, with its report, results and compression table) runs
# as the first command of the README in tests/test_docs.py.
