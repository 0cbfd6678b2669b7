"""Typed configs from YAML with dotted command-line overrides.

Every config is a pydantic model with `extra="forbid"`, so a typo in a YAML key or an
override is an error that names the key, never silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for configs: unknown keys, NaN and infinities are errors; assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names file and key."""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ["train.lr=1e-4", "data.paths=[a,b]"] into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
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
        lines = [f"invalid config ({source}):"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = (
                "unknown key (check for a typo)" if err["type"] == "extra_forbidden" else err["msg"]
            )
            lines.append(f"  {loc}: {msg} (got {err.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None


def _read_yaml_with_inherit(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config inheritance loops through {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    parent = data.pop("inherit", None)
    if parent is not None:
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
