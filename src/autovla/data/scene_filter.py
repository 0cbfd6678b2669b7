"""Scene filters (NAVSIM's navtest style): which scenes of a dataset an evaluation or a
metric-cache run covers, by scene token."""

from __future__ import annotations

import os
from pathlib import Path

from autovla.data.schema import DrivingSample


def read_scene_filter(path: str | os.PathLike) -> set[str]:
    """Scene tokens to keep: a text file with one token per line (`#` starts a comment), or a
    NAVSIM scene-filter YAML with a `tokens` list (e.g. navtest.yaml)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"scene filter not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            raise ValueError(f"{p}: field 'tokens': a scene-filter YAML needs a list of tokens")
        return {str(t).strip() for t in tokens if str(t).strip()}
    tokens = {line.split("#", 1)[0].strip() for line in text.splitlines()}
    tokens.discard("")
    if not tokens:
        raise ValueError(f"{p}: no scene tokens (one per line)")
    return tokens


def scene_token(sample: DrivingSample) -> str:
    """A NAVSIM sample's scene token (`meta.scene_token`, else the id without `navsim-`)."""
    tok = (sample.meta or {}).get("scene_token")
    if tok:
        return str(tok)
    return sample.id.removeprefix("navsim-")


def in_filter(sample: DrivingSample, tokens: set[str] | None) -> bool:
    return tokens is None or scene_token(sample) in tokens or sample.id in tokens
