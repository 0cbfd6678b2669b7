"""Typed configs from YAML with dotted command-line overrides.

Every config is a pydantic model with `extra="forbid"`, so a typo in a YAML key or an
override is an error that names the key, never silently ignored.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)

MAX_DEPTH = 32  # nesting levels of a config (real ones use 4); deeper input is refused
MAX_NODES = 100_000  # values after YAML aliases are expanded (a config has a few hundred)
MAX_FILE_BYTES = 10 * 2**20  # a recipe is a few kilobytes
MAX_ERRORS = 5  # validation errors quoted in one message

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxdict = _short.maxtuple = _short.maxset = 4
_short.maxlevel = 3


def short_repr(value: Any) -> str:
    """A bounded repr of a value from a config or a file (safe for huge or nested input)."""
    return _short.repr(value)


class StrictModel(BaseModel):
    """Base for configs: unknown keys, NaN and infinities are errors; assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names file and key."""


def validation_message(e: ValidationError, source: str | None = None) -> str:
    """One line for a pydantic error: `[source: ]field: message (got value); ...`."""
    parts = []
    errors = e.errors()
    for err in errors[:MAX_ERRORS]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key (check for a typo)" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")  # a validator's own message says enough
        shown = "input" in err and err["type"] != "missing"  # a missing key's input: the parent
        got = f" (got {short_repr(err['input'])})" if shown else ""
        parts.append(f"{loc}: {msg}{got}")
    if len(errors) > MAX_ERRORS:
        parts.append(f"and {len(errors) - MAX_ERRORS} more errors")
    head = f"invalid {source}: " if source else f"invalid {e.title}: "
    return head + "; ".join(parts)


def check_nesting(data: Any, where: str) -> Any:
    """`data` unchanged, or ConfigError when it nests deeper than MAX_DEPTH or expands (YAML
    aliases) to more than MAX_NODES values; `where` names the file or override."""
    sizes: dict[int, int] = {}

    def size(node: Any, depth: int) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        if id(node) not in sizes:  # aliases share objects: count each once, expand by sum
            children = node.values() if isinstance(node, dict) else node
            sizes[id(node)] = 1 + sum(size(c, depth + 1) for c in children)
            if sizes[id(node)] > MAX_NODES:
                raise ConfigError(f"{where}: more than {MAX_NODES} values (YAML aliases?)")
        return sizes[id(node)]

    size(data, 0)
    return data


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> data, every failure a ConfigError naming `where` and the line."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = e.problem or e.context or "syntax error"
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        # tags such as !!timestamp build Python values and may fail on their input
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    return check_nesting(data, where)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ["train.lr=1e-4", "data.paths=[a,b]"] into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {short_repr(item)} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        value = parse_yaml(raw, f"override {short_repr(item)}") if raw != "" else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Build `cls`: defaults, then the YAML file (which may `inherit:` another), then overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data = _read_yaml_with_inherit(Path(path))
        source = str(path)
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
        source += " + overrides"
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(validation_message(e, f"config ({source})")) from None


def _read_yaml_with_inherit(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config inheritance loops through {path}")
    if len(seen) >= MAX_DEPTH:
        raise ConfigError(f"{path}: more than {MAX_DEPTH} levels of inherit")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a config")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    data = parse_yaml(text, str(path))
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    parent = data.pop("inherit", None)
    if parent is not None and not isinstance(parent, str):
        raise ConfigError(f"{path}: inherit must be a file name, got {short_repr(parent)}")
    if parent is not None:
        if not (path.parent / parent).is_file():
            raise ConfigError(f"{path}: inherit {parent!r}: no such file {path.parent / parent}")
        base = _read_yaml_with_inherit(path.parent / parent, (*seen, path.resolve()))
        data = deep_merge(base, data)
    return data


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def recipe_path(name: str) -> Path:
    """A recipe from `configs/`: $AUTOVLA_CONFIGS, ./configs, or the source checkout's configs."""
    import os

    candidates = []
    if os.environ.get("AUTOVLA_CONFIGS"):
        candidates.append(Path(os.environ["AUTOVLA_CONFIGS"]))
    candidates += [Path.cwd() / "configs", Path(__file__).resolve().parents[2] / "configs"]
    for folder in candidates:
        if (folder / name).is_file():
            return (folder / name).resolve()
    searched = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"recipe {name!r} not found (looked in {searched}); set AUTOVLA_CONFIGS")
