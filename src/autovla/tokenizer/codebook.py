"""The action codebook: token contours, safe save/load, and encode/decode entry points.

File format: one `.safetensors` file holding `contours` (float32 [K, 6, 4, 2], corners
FL, FR, RR, RL in metres, in the token's start frame, 6 sub-steps 0.1 s apart) with the JSON
metadata stored as the string `autovla_codebook` in the safetensors header (length, width,
segment seconds, sub-steps, tol, seed, sources, coverage, ...). No pickle anywhere.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autovla.io import atomic_path
from autovla.tokenizer import matching
from autovla.tokenizer.contours import DEFAULT_LENGTH, DEFAULT_WIDTH, SUB_STEPS, contour_pose

META_KEY = "autovla_codebook"
FORMAT_VERSION = 1
# Metadata the code computes with: key -> (largest sensible value, unit). Checked on every
# codebook, so a file's `length: "abc"` or NaN is refused when loaded, not deep in a report.
MAX_COORD = 1e4  # metres; a token moves a vehicle box for 0.5 s
NUMERIC_META = {
    "length": (100.0, "m"),
    "width": (100.0, "m"),
    "segment_seconds": (60.0, "s"),
    "tol": (100.0, "m"),  # optional: the report's coverage radius
}


class CodebookError(ValueError):
    """A codebook file or array that cannot be used (names the file and the problem)."""


@dataclass(eq=False)  # tensors have no single truth value: compare .contours instead
class Codebook:
    """K action tokens as vehicle-box contours; token 0 is (near) zero motion."""

    contours: torch.Tensor  # float32 [K, 6, 4, 2]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = torch.as_tensor(self.contours)
        if c.ndim != 4 or c.shape[1:] != (SUB_STEPS, 4, 2) or c.shape[0] < 1:
            raise CodebookError(f"contours must have shape [K, 6, 4, 2], got {tuple(c.shape)}")
        if not c.is_floating_point():
            raise CodebookError(f"contours must be floating point, got {c.dtype}")
        if not torch.isfinite(c).all():
            raise CodebookError("contours contain NaN or infinite values")
        if c.abs().max() > MAX_COORD:
            raise CodebookError(f"contours reach beyond {MAX_COORD:g} m (a 0.5 s segment?)")
        self.contours = c.to(torch.float32)
        self.meta = dict(self.meta)
        self.meta.setdefault("length", DEFAULT_LENGTH)
        self.meta.setdefault("width", DEFAULT_WIDTH)
        self.meta.setdefault("segment_seconds", 0.5)
        self.meta.setdefault("sub_steps", SUB_STEPS)
        _check_meta(self.meta)
        self.meta["size"] = int(c.shape[0])
        self._cache: dict[str, Any] = {}  # derived tensors, built on first use

    # --- basic views ---------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.contours.shape[0])

    def __len__(self) -> int:
        return self.size

    @property
    def device(self) -> torch.device:
        return self.contours.device

    @property
    def end_poses(self) -> torch.Tensor:
        """(K, 3) float32 (dx, dy, dtheta) of each token in its start frame."""
        return self._end_poses64().to(torch.float32)

    def _end_poses64(self) -> torch.Tensor:
        if "end_poses" not in self._cache:
            self._cache["end_poses"] = contour_pose(self.contours[:, -1].to(matching.DTYPE))
        return self._cache["end_poses"]

    def _token_end_match(self) -> torch.Tensor:
        if "token_end" not in self._cache:
            self._cache["token_end"] = self.contours[:, -1].to(matching.MATCH_DTYPE).contiguous()
        return self._cache["token_end"]

    def to(self, device: torch.device | str) -> Codebook:
        return Codebook(self.contours.to(device), self.meta)

    # --- tokens <-> trajectories ---------------------------------------------------------
    def encode(self, trajectories, *, batched: bool = True) -> torch.Tensor:
        """Token ids for ego-frame trajectories (T, 3) -> (T,) or (B, T, 3) -> (B, T).

        Poses are at 0.5 s steps starting 0.5 s after the start pose, which is the origin.
        """
        traj = matching.as_trajectories(trajectories, self.device)
        args = (traj, self._token_end_match(), self._end_poses64(), *self._box())
        if batched:
            if "index" not in self._cache:
                self._cache["index"] = matching.TokenIndex(self._token_end_match())
            ids = matching.encode_batched(*args, index=self._cache["index"])
        else:
            ids = matching.encode_loop(*args)
        return ids[0] if _ndim(trajectories) == 2 else ids

    def encode_reference(self, trajectories) -> torch.Tensor:
        """The plain per-trajectory, per-step loop (same results as `encode`, far slower)."""
        return self.encode(trajectories, batched=False)

    def decode(self, ids, *, batched: bool = True) -> torch.Tensor:
        """Poses float32 (T, 3) or (B, T, 3) rolled out from the origin for ids (T,) / (B, T)."""
        t = matching.as_ids(ids, self.size, self.device)
        fn = matching.decode_batched if batched else matching.decode_loop
        poses = fn(t, self._end_poses64()).to(torch.float32)
        return poses[0] if _ndim(ids) == 1 else poses

    def decode_reference(self, ids) -> torch.Tensor:
        """The plain per-trajectory, per-step rollout (same results as `decode`)."""
        return self.decode(ids, batched=False)

    def _box(self) -> tuple[float, float]:
        return float(self.meta["length"]), float(self.meta["width"])

    # --- files ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write `path` (.safetensors) atomically: contours + JSON metadata in the header."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"format": "autovla-codebook", "version": FORMAT_VERSION, **self.meta}
        header = {META_KEY: json.dumps(meta, allow_nan=False, sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file({"contours": self.contours.detach().cpu().contiguous()}, str(tmp), header)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> Codebook:
        """Read a file written by `save`; errors name the file and what is wrong."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise CodebookError(f"{path}: no such codebook file")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                if "contours" not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    raise CodebookError(f"{path}: no 'contours' tensor (found {list(f.keys())})")
                contours = f.get_tensor("contours")
        except SafetensorError as e:
            raise CodebookError(f"{path}: not a readable safetensors file ({e})") from e
        if META_KEY not in header:
            raise CodebookError(f"{path}: missing '{META_KEY}' metadata in the header")
        try:
            meta = json.loads(header[META_KEY])
        except json.JSONDecodeError as e:
            raise CodebookError(f"{path}: metadata is not valid JSON ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != "autovla-codebook":
            raise CodebookError(f"{path}: metadata does not describe an autovla codebook")
        version = meta.get("version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
            raise CodebookError(
                f"{path}: metadata 'version' {version!r} is not one this code reads "
                f"(up to {FORMAT_VERSION})"
            )
        try:
            return cls(contours, meta).to(device)
        except CodebookError as e:
            raise CodebookError(f"{path}: {e}") from e


def _check_meta(meta: dict[str, Any]) -> None:
    for key, (largest, unit) in NUMERIC_META.items():
        if key not in meta:
            continue
        v = meta[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not (ok and math.isfinite(v) and 0 < v <= largest):
            raise CodebookError(
                f"metadata {key!r} must be a number in (0, {largest:g}] {unit}, got {v!r:.60}"
            )
    if meta["sub_steps"] != SUB_STEPS or isinstance(meta["sub_steps"], bool):
        raise CodebookError(
            f"metadata 'sub_steps' must be {SUB_STEPS}, got {meta['sub_steps']!r:.60}"
        )


def _ndim(x) -> int:
    return x.ndim if hasattr(x, "ndim") else _list_ndim(x)


def _list_ndim(x) -> int:
    n = 0
    while isinstance(x, (list, tuple)) and x:
        n, x = n + 1, x[0]
    return n
