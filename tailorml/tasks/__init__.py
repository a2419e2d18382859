"""Task types, found by `task.type`: one module per type, each registering one `Task` object.

    from tailorml.tasks import get_task
    task = get_task("multilabel")      # ConfigError naming the known types if unknown

See `tailorml/tasks/base.py` for the protocol and how to add a task.
"""

from __future__ import annotations

import difflib

from tailorml.errors import ConfigError
from tailorml.tasks.base import Task

_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in _REGISTRY and _REGISTRY[task.name] is not task:
        raise ValueError(f"task type {task.name!r} is registered twice")
    _REGISTRY[task.name] = task
    return task


def task_names() -> list[str]:
    return list(_REGISTRY)


def all_tasks() -> list[Task]:
    return list(_REGISTRY.values())


def get_task(name: str, key: str = "task.type") -> Task:
    """The task registered under `name`; `key` names the config field in the error."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"`{key}` = {name!r} is not a task type.{hint} Choose one of: "
            f"{', '.join(_REGISTRY)} (`tailor tasks` describes each)."
        ) from None


# The built-in task types register themselves on import (order = the order `tailor tasks` lists).
from tailorml.tasks import classification, multilabel, pair, regression  # noqa: E402, F401

__all__ = ["Task", "all_tasks", "get_task", "register", "task_names"]
