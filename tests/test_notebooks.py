"""Every notebook in notebooks/ runs headless, top to bottom, with no error (nbclient, kernel
python3 of this venv, this checkout's tailorml), and is stored without outputs, so none can rot
unseen or carry stale results in git.

Notebooks are picked up by the glob: a new one is tested with no change here. Each cell must
finish within NOTEBOOK_TIMEOUT (the foundations notebooks take seconds in all). A notebook that
trains for minutes says so in its metadata, `"tailorml": {"slow": true}`, and then runs only
with `-m slow`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NOTEBOOK_TIMEOUT = 120  # seconds per cell


def _run_param(path: Path) -> object:
    meta = nbformat.read(path, as_version=4).metadata.get("tailorml", {})
    return pytest.param(path, id=path.stem, marks=pytest.mark.slow if meta.get("slow") else ())


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} hold outputs or execution counts; strip them before "
        f"committing (e.g. `jupyter nbconvert --clear-output --inplace {path.relative_to(REPO)}`)"
    )


@pytest.mark.parametrize("path", [_run_param(p) for p in NOTEBOOKS])
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(path, as_version=4)
    run(nb, monkeypatch, cwd=path.parent)  # raises CellExecutionError naming the cell
    ran = [c for c in nb.cells if c.cell_type == "code"]
    assert ran and all(c.execution_count is not None for c in ran)
    shown = any(o.get("data", {}).get("image/png") for c in ran for o in c.outputs)
    plots = any("plt.show()" in c.source for c in ran)
    assert shown or not plots, f"{path.name}: its plots drew nothing"


def test_the_kernel_imports_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not another tailorml the venv may have installed."""
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import tailorml; print(tailorml.__file__)")]
    )
    run(nb, monkeypatch, cwd=REPO / "notebooks")
    assert nb.cells[0].outputs[0]["text"].startswith(str(REPO / "tailorml"))


def run(nb: nbformat.NotebookNode, monkeypatch: pytest.MonkeyPatch, cwd: Path) -> None:
    # The kernel is a child process that inherits this environment: this checkout goes first on
    # its path. Plots use ipykernel's inline backend (PNG in the outputs, no display needed).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    client = NotebookClient(
        nb,
        kernel_name="python3",  # the venv's ipykernel: jupyter_client starts it with sys.executable
        timeout=NOTEBOOK_TIMEOUT,
        resources={"metadata": {"path": str(cwd)}},  # the kernel's working directory
    )
    client.execute()
