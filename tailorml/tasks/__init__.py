"""Task types, found by `task.type`: one module per type, each registering one `Task` object.

    from tailorml.tasks import get_task
    task = get_task("multilabel")      # ConfigError naming the known types if unknown
    info = find_task("generation")     # any family; get_task only classifier-family tasks

See `tailorml/tasks/base.py` for the protocol and how to add a task.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

from tailorml.errors import ConfigError

if TYPE_CHECKING:
    from tailorml.tasks.base import Task, TaskInfo

# The built-in task modules, imported on the first lookup (a registry that other layers, the
# config's `task.type` check among them, can ask without importing every task). Their order is
# the order `tailor tasks` lists them in.
BUILT_IN = ("classification", "multilabel", "pair", "regression", "generation", "images")
_REGISTRY: dict[str, TaskInfo] = {}
_loaded = False


def _load_built_in() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in BUILT_IN:
            importlib.import_module(f"tailorml.tasks.{name}")


def register(task: TaskInfo) -> TaskInfo:
    if task.name in _REGISTRY and _REGISTRY[task.name] is not task:
        raise ValueError(f"task type {task.name!r} is registered twice")
    _REGISTRY[task.name] = task
    return task


def task_names() -> list[str]:
    _load_built_in()
    return list(_REGISTRY)


def all_tasks() -> list[TaskInfo]:
    _load_built_in()
    return list(_REGISTRY.values())


def find_task(name: str, key: str = "task.type") -> TaskInfo:
    """The task registered under `name`, of any model family; `key` names the config field in
    the error."""
    _load_built_in()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"`{key}` = {name!r} is not a task type.{hint} Choose one of: "
            f"{', '.join(_REGISTRY)} (`tailor tasks` describes each)."
        ) from None


def get_task(name: str, key: str = "task.type") -> Task:
    """The task registered under `name`, whose heads live in a sequence classifier (what
    heads, predictors, serving and compression handle). A task of another family is refused
    with the command that handles it."""
    from tailorml.tasks.base import IMAGE_CLASSIFIER, SEQUENCE_CLASSIFIER, Task

    task = find_task(name, key)
    if task.family == IMAGE_CLASSIFIER:
        raise ConfigError(
            f"`{key}` = {name!r} trains an image classifier, which this step does not handle "
            "(it reads text). Train it with `tailor finetune CONFIG`, score it with `tailor "
            "evaluate RUN --data IMAGES`, serve it with `tailor serve RUN` (see docs/images.md)."
        )
    if task.family != SEQUENCE_CLASSIFIER or not isinstance(task, Task):
        raise ConfigError(
            f"`{key}` = {name!r} trains a {task.family} model, which this step does not handle "
            "(it works on classifier heads). Train it with `tailor finetune CONFIG`, run it "
            "with `tailor generate RUN` and score it with `tailor evaluate RUN`."
        )
    return task


__all__ = ["all_tasks", "find_task", "get_task", "register", "task_names"]
