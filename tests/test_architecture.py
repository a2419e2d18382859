"""The layering rules of docs/architecture.md, checked on the source (ast, no import)."""

from __future__ import annotations

import ast
from pathlib import Path

from tailorml.tasks import task_names

from .conftest import REPO

PKG = REPO / "tailorml"


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
        out.append((rel.removesuffix(".__init__"), ast.parse(path.read_text(encoding="utf-8"))))
    return out


def _imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_lower_layers_never_import_recipes_and_recipes_not_each_other() -> None:
    bad = []
    for name, tree in _modules():
        recipes = {i for i in _imports(tree) if i.startswith("tailorml.recipes")}
        if name.startswith(("tailorml.recipes", "tailorml.cli", "tailorml.apps", "tailorml.tune")):
            if name.startswith("tailorml.recipes"):
                bad += [f"{name} imports {i}" for i in recipes if not i.startswith(name)]
            continue
        bad += [f"{name} imports {i}" for i in recipes]
    assert not bad, bad


def test_no_branching_on_task_names_outside_the_task_modules() -> None:
    """A new task is a module, not a branch: only tailorml/tasks/ compares against task names
    (or `multitask`)."""
    names = set(task_names()) | {"multitask"}
    bad = []
    for name, tree in _modules():
        if name.startswith("tailorml.tasks"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                consts = [n for n in ast.walk(node) if isinstance(n, ast.Constant)]
                hits = [c.value for c in consts if c.value in names]
                hits += [
                    n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id == "MULTITASK"
                ]
                if hits:
                    bad.append(f"{name}:{node.lineno} compares with {hits}")
            if isinstance(node, ast.If | ast.IfExp):
                test = node.test
                flag = test.operand if isinstance(test, ast.UnaryOp) else test
                if isinstance(flag, ast.Name) and flag.id in ("multi", "multitask"):
                    bad.append(f"{name}:{node.lineno} branches on `{flag.id}`")
    assert not bad, bad


def test_the_onnx_predictor_modules_import_no_torch() -> None:
    """Module-level imports of the ONNX serving path (the subprocess test in test_compress.py
    checks the running process)."""
    path = ("base", "encoder", "onnx_runtime", "__init__")
    for mod in path:
        tree = ast.parse((PKG / "predictors" / f"{mod}.py").read_text(encoding="utf-8"))
        top = {
            n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
            for n in tree.body
            if isinstance(n, ast.Import | ast.ImportFrom)
        }
        assert not {t for t in top if t and t.split(".")[0] in ("torch", "transformers")}, mod


def test_nothing_changes_the_environment_on_import() -> None:
    """Environment set-up is an explicit call (tailorml.env.setup), not an import side effect."""
    bad = []
    for name, tree in _modules():
        for node in tree.body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                src = ast.unparse(node.value)
                if "environ" in src:
                    bad.append(f"{name}:{node.lineno} {src}")
    assert not bad, bad


def test_architecture_doc_names_real_modules() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    for rel in ("tailorml/tasks/base.py", "tailorml/launch.py", "tailorml/files.py"):
        assert rel in doc and (REPO / rel).is_file(), rel
    assert Path(REPO / "tests" / "test_tasks.py").is_file()
