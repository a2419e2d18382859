"""Errors meant for people: each carries every problem found and the fix for it."""

from __future__ import annotations


class TailorError(Exception):
    """A problem with the user's input (config, data, paths). Printed without a traceback."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return "\n".join(f"- {p}" for p in self.problems)


class ConfigError(TailorError):
    """The config is invalid."""


class DataError(TailorError):
    """The data files are missing, malformed or do not match the config."""
