"""Load a YAML config, apply dotted `key=value` overrides, validate; report every problem."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tailorml.config.checks import cross_field_problems
from tailorml.config.schema import HeadConfig, RunConfig
from tailorml.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Config file not found: {path}. Check the path (see configs/ for examples)."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{path} is not valid YAML{where}: {problem}. Fix the indentation or quoting there."
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text. Save the config as UTF-8.") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path} must hold a mapping of sections (data:, model:, ...), not a list."
        )
    return raw


def parse_value(text: str) -> Any:
    """Parse the right-hand side of an override the way YAML would (`3` -> int, `null` -> None)."""
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads `3e-5` as a string; people mean a number
            return float(value) if any(c.isdigit() for c in value) else value
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested mapping (a new mapping is returned)."""
    import copy

    out = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(
                f"Override `{item}` has no `=`. Write it as key=value, e.g. train.lr=3e-5."
            )
            continue
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if nxt is None:  # an optional section left out (`model.lora`): the override starts it
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                problems.append(f"Override `{key}`: `{part}` is a value, not a section.")
                break
            node = nxt
        else:
            node[parts[-1]] = parse_value(value)
    if problems:
        raise ConfigError(problems)
    return out


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


RUN_KEYS_HINT = "Run `tailor config schema` to list the keys."


def _model_of(ann: Any) -> type[BaseModel] | None:
    """The section class behind an annotation: `Model`, `Model | None`, `dict[str, Model]`."""
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _suggest(loc: tuple[Any, ...], root: type[BaseModel] = RunConfig) -> str:
    """For an unknown key, suggest the closest known key of that section."""
    section: type[BaseModel] | None = root
    parts = list(loc[:-1])
    i = 0
    while i < len(parts):
        assert section is not None
        field = section.model_fields.get(str(parts[i]))
        if field is None:
            return ""
        ann = field.annotation
        nxt = _model_of(ann)
        if nxt is None:
            return ""
        if "dict[" in str(ann):  # a mapping of sections (heads): skip its key
            i += 1
        section = nxt
        i += 1
    assert section is not None
    close = difflib.get_close_matches(str(loc[-1]), _field_names(section), n=1)
    return f" Did you mean `{'.'.join(map(str, loc[:-1] + (close[0],)))}`?" if close else ""


def describe_validation_error(
    exc: ValidationError, root: type[BaseModel] = RunConfig, hint: str = RUN_KEYS_HINT
) -> list[str]:
    """One sentence per problem pydantic found in a mapping validated as `root`; an unknown key
    gets the closest known one and `hint` (where the keys are listed)."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            problems.append(f"Unknown key `{key}`.{_suggest(loc, root)} {hint}".rstrip())
        elif not loc:  # a check across fields (a model validator): its message names them
            problems.append(str(err["msg"]).removeprefix("Value error, "))
        elif err["type"] == "missing":
            problems.append(f"`{key}` is missing. Give it a value.")
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict) else "a mapping"
            problems.append(f"`{key}` = {shown}: {err['msg']}.")
    return problems


def lenient_config(raw: dict[str, Any]) -> RunConfig | None:
    """The config with every invalid or unknown key dropped (its default used instead), so that
    the checks that need a config (files, rows, model base) still run on everything else: one
    mistyped key must not hide a missing data file. None if it cannot be repaired."""
    import copy

    current = copy.deepcopy(raw)
    for _ in range(20):
        try:
            return RunConfig.model_validate(current)
        except ValidationError as exc:
            for err in exc.errors():
                node: Any = current
                loc = list(err["loc"])
                for part in loc[:-1]:
                    node = node.get(part) if isinstance(node, dict) else None
                if isinstance(node, dict) and loc:
                    node.pop(loc[-1], None)
                elif not loc:
                    return None
    return None


def load_options(
    cls: type[T],
    path: str | Path | None,
    flags: dict[str, Any],
    command: str,
    flag_names: dict[str, str] | None = None,
) -> T:
    """Options of a command: a YAML file's values (`--config`), then the flags given (None =
    not given). Errors name the key and its flag (`budget` (--budget)) and list every problem.
    `flag_names`: how to name keys whose flag is not `--key-with-dashes`."""
    values: dict[str, Any] = read_yaml(path) if path is not None else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = describe_validation_error(
            exc, cls, f"Run `tailor config schema {command}` to list the keys."
        )
    names = {k: "--" + k.replace("_", "-") for k in cls.model_fields} | (flag_names or {})
    out = []
    for p in problems:
        for key, flag in names.items():
            if p.startswith((f"`{key}` =", f"`{key}` is")):
                p = p.replace(f"`{key}`", f"`{key}` ({flag})", 1)
                break
        out.append(p)
    raise ConfigError(out)


def validate_mapping(raw: dict[str, Any]) -> tuple[RunConfig | None, list[str]]:
    """Validate a merged mapping; return the config (or None) and every problem found."""
    problems: list[str] = []
    cfg: RunConfig | None = None
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(describe_validation_error(exc))
    problems.extend(cross_field_problems(raw))
    return (cfg if not problems else None), problems


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate; raise ConfigError listing every problem."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    cfg, problems = validate_mapping(raw)
    if problems or cfg is None:
        raise ConfigError(problems)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    # A multi-task config keeps data and task under its heads; the unused top-level defaults are
    # left out so that the dump reads (and re-loads) as the user wrote it.
    exclude = {"data", "task"} if cfg.heads is not None else {"heads"}
    if cfg.distill.teacher is None:  # only a distillation run shows the section
        exclude.add("distill")
    if not cfg.tune.space:  # only a study's config shows its search
        exclude.add("tune")
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude=exclude), sort_keys=False)


def _optional_section(ann: Any) -> type[BaseModel] | None:
    """`Section | None` -> Section (a section that is off unless given); else None."""
    import types
    import typing

    if typing.get_origin(ann) not in (typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def schema_lines(root: type[BaseModel] = RunConfig) -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every field, for `tailor config schema`."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            section = _optional_section(ann)
            if section is not None:  # an optional section (`model.lora`): itself, then its keys
                doc = field.description or ""
                rows.append((prefix + name, "section | None", "None", doc))
                walk(section, f"{prefix}{name}.")
                continue
            if name == "heads" and model is RunConfig:
                continue  # listed below, per head
            type_name = str(ann).replace("typing.", "").replace("pathlib.", "")
            type_name = type_name.replace("<class '", "").replace("'>", "")
            default = field.get_default(call_default_factory=True)
            rows.append((prefix + name, type_name, repr(default), field.description or ""))

    walk(root, "")
    if root is RunConfig:
        rows.append(
            (
                "heads",
                "dict[str, head] | None",
                "None",
                RunConfig.model_fields["heads"].description or "",
            )
        )
        walk(HeadConfig, "heads.<name>.")
    return rows
