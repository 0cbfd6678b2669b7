"""K-disk fitting of the action codebook from 0.5 s trajectory segments (docs/method.md section 3).

Each segment is the end pose (dx, dy, dtheta) of 0.5 s of motion in its start frame, and is
compared by the box contour at its end. K times: pick a segment (first the zero motion, then
at random among those left), take every remaining segment whose mean corner distance to it is
within `tol`, make their mean pose a token, remove them. Token 0 is kept exactly at zero
motion rather than the mean of the near-still segments it absorbs.

Scaling: picking "at random among those left" is the same as walking one seeded random
permutation and skipping removed segments. Because the mean corner distance is at least the
distance between box centres, only segments whose x lies within `tol` can match; segments are
sorted by x, so each pick examines one contiguous band. Removed segments are compacted away
when they make up half the arrays. Memory: ~60 bytes per segment.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from autovla.tokenizer.codebook import Codebook
from autovla.tokenizer.contours import DEFAULT_LENGTH, DEFAULT_WIDTH, box_contour, token_contours
from autovla.tokenizer.matching import corner_distance, nearest_tokens

log = logging.getLogger(__name__)


class NotEnoughSegmentsError(ValueError):
    """The data ran out before K tokens were found."""

    def __init__(
        self, found: int, size: int, segments: int, tol: float, allow: str = "allow_fewer=True"
    ) -> None:
        super().__init__(
            f"the data ran out after {found} of {size} tokens ({segments} segments, tol {tol} m): "
            f"add data, lower the size or tol, or pass {allow}"
        )
        self.found, self.size, self.segments, self.tol = found, size, segments, tol

    def worded_for(self, allow: str) -> NotEnoughSegmentsError:
        """The same error with another way to allow fewer tokens (a CLI flag)."""
        return NotEnoughSegmentsError(self.found, self.size, self.segments, self.tol, allow)


def segments_from_trajectories(trajectories, start_at_origin: bool = True) -> np.ndarray:
    """End poses (N, 3) of consecutive 0.5 s segments, each in its start pose's frame.

    `trajectories` is (T, 3) or (B, T, 3); with `start_at_origin` the origin (the current
    pose) is prepended, so T poses give T segments.
    """
    p = np.asarray(trajectories, dtype=np.float64)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[-1] != 3:
        raise ValueError(f"trajectories must be (T, 3) or (B, T, 3), got {p.shape}")
    if start_at_origin:
        p = np.concatenate([np.zeros((p.shape[0], 1, 3)), p], 1)
    a, b = p[:, :-1], p[:, 1:]
    c, s = np.cos(a[..., 2]), np.sin(a[..., 2])
    dx, dy = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    dh = np.mod(b[..., 2] - a[..., 2] + np.pi, 2 * np.pi) - np.pi
    seg = np.stack([c * dx + s * dy, -s * dx + c * dy, dh], -1).reshape(-1, 3)
    return seg


@dataclass
class FitStats:
    segments: int
    tokens: int
    assigned: int  # segments removed by some pick (each within tol of that pick)
    members: np.ndarray  # (K,) segments per token

    @property
    def assigned_share(self) -> float:
        return self.assigned / max(self.segments, 1)


def _end_contours(poses: np.ndarray, length: float, width: float) -> np.ndarray:
    return box_contour(torch.from_numpy(poses), length, width).numpy()


def kdisk(
    segments: np.ndarray,
    size: int,
    tol: float,
    seed: int,
    length: float,
    width: float,
    progress: bool = True,
) -> tuple[np.ndarray, FitStats]:
    """Token end poses (k <= size, 3) and statistics; see the module docstring."""
    seg = np.asarray(segments, dtype=np.float64)
    n = len(seg)
    order = np.argsort(seg[:, 0], kind="stable")
    poses = seg[order]
    xs = poses[:, 0].copy()
    corners = _end_contours(poses, length, width).astype(np.float64)
    alive = np.ones(n, dtype=bool)
    perm = np.random.default_rng(seed).permutation(n)  # positions in the sorted arrays
    cursor, n_dead = 0, 0
    tokens: list[np.ndarray] = []
    members: list[int] = []

    def take(pick_pose: np.ndarray, pick_corners: np.ndarray, exact: bool = False) -> None:
        nonlocal n_dead
        lo = np.searchsorted(xs, pick_pose[0] - tol, "left")
        hi = np.searchsorted(xs, pick_pose[0] + tol, "right")
        idx = lo + np.flatnonzero(alive[lo:hi])
        d = corner_distance(torch.from_numpy(corners[idx]), torch.from_numpy(pick_corners))
        hit = idx[(d / 4.0 <= tol).numpy()]
        alive[hit] = False
        n_dead += len(hit)
        if len(hit) and not exact:
            p = poses[hit]
            h = math.atan2(np.sin(p[:, 2]).mean(), np.cos(p[:, 2]).mean())
            tokens.append(np.array([p[:, 0].mean(), p[:, 1].mean(), h]))
        else:
            tokens.append(pick_pose.copy())
        members.append(len(hit))

    zero = np.zeros(3)
    # Token 0 stays exactly "no motion" (not the mean of its near-still members), so a
    # stopped vehicle does not creep when its plan is decoded.
    take(zero, _end_contours(zero[None], length, width)[0], exact=True)
    bar = tqdm(total=size, desc="k-disk", unit="tok", disable=not progress)
    bar.update(1)
    while len(tokens) < size:
        if 2 * n_dead > len(xs) and n_dead > 0:  # compact: drop removed segments
            keep = alive
            new_pos = np.cumsum(keep) - 1
            rest = perm[cursor:]
            perm, cursor = new_pos[rest[keep[rest]]], 0
            xs, poses, corners = xs[keep], poses[keep], corners[keep]
            alive, n_dead = np.ones(len(xs), dtype=bool), 0
        while cursor < len(perm) and not alive[perm[cursor]]:
            cursor += 1
        if cursor >= len(perm):
            break
        i = perm[cursor]
        take(poses[i], corners[i])
        bar.update(1)
    bar.close()
    stats = FitStats(n, len(tokens), int(sum(members)), np.asarray(members, dtype=np.int64))
    return np.stack(tokens), stats


def coverage_usage(
    codebook: Codebook,
    segments: np.ndarray,
    tol: float,
    max_segments: int = 50_000,
    seed: int = 0,
    chunk: int = 4096,
) -> dict[str, float]:
    """Share of (a seeded sample of) segments whose nearest token is within `tol` (mean
    corner distance), and the share of tokens that are some sampled segment's nearest."""
    seg = np.asarray(segments, dtype=np.float64)
    if len(seg) > max_segments:
        seg = seg[np.random.default_rng(seed).choice(len(seg), max_segments, replace=False)]
    length, width = codebook._box()
    token_end = codebook._token_end_match()
    used = torch.zeros(codebook.size, dtype=torch.bool)
    covered, err = 0, 0.0
    for s in range(0, len(seg), chunk):
        target = box_contour(torch.from_numpy(seg[s : s + chunk]), length, width)
        target = target.to(token_end.dtype)
        k = nearest_tokens(target, token_end)
        d = corner_distance(target, token_end[k]) / 4.0
        covered += int((d <= tol).sum())
        err += float(d.sum())
        used[k] = True
    n = max(len(seg), 1)
    return {
        "coverage": covered / n,
        "usage": float(used.float().mean()),
        "mean_corner_error": err / n,
        "evaluated_segments": len(seg),
    }


def fit_codebook(
    segments_or_trajectories,
    size: int = 2048,
    tol: float = 0.05,
    seed: int = 0,
    *,
    length: float = DEFAULT_LENGTH,
    width: float = DEFAULT_WIDTH,
    allow_fewer: bool = False,
    sources: Iterable[str] = (),
    progress: bool = True,
    coverage_segments: int = 50_000,
) -> Codebook:
    """Fit a K-disk codebook on segment end poses (N, 3) or trajectories (B, T, 3) (the
    latter start at the origin, one segment per step). Raises NotEnoughSegmentsError when
    fewer than `size` tokens exist, unless `allow_fewer`."""
    arr = segments_or_trajectories
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr, dtype=np.float64)
    seg = segments_from_trajectories(arr) if arr.ndim == 3 else arr
    if seg.ndim != 2 or seg.shape[1] != 3:
        raise ValueError(f"segments must be (N, 3) = (dx, dy, dtheta), got {seg.shape}")
    if not np.isfinite(seg).all():
        raise ValueError(f"{int((~np.isfinite(seg)).any(1).sum())} segments are not finite")
    if size < 1 or tol <= 0:
        raise ValueError(f"size must be >= 1 and tol > 0, got size={size} tol={tol}")
    ends, stats = kdisk(seg, size, tol, seed, length, width, progress)
    if stats.tokens < size and not allow_fewer:
        raise NotEnoughSegmentsError(stats.tokens, size, stats.segments, tol)
    contours = token_contours(torch.from_numpy(ends), length, width).to(torch.float32)
    meta = {
        "length": length,
        "width": width,
        "tol": tol,
        "seed": seed,
        "requested_size": size,
        "segments": stats.segments,
        "sources": list(sources),
        "assigned_share": stats.assigned_share,
        "min_members": int(stats.members[1:].min()) if stats.tokens > 1 else 0,
        "sub_steps_interpolated": True,
    }
    cb = Codebook(contours, meta)
    cu = coverage_usage(cb, seg, tol, coverage_segments, seed)
    cb.meta.update(
        {
            "coverage": cu["coverage"],
            "usage": cu["usage"],
            "coverage_evaluated_segments": cu["evaluated_segments"],
        }
    )
    return cb


def sample_trajectory(sample) -> np.ndarray:
    """History, the current pose (origin) and the future of a DrivingSample, oldest first."""
    hist = sample.history_array()
    parts = [hist]
    if len(hist) == 0 or np.abs(hist[-1]).max() > 1e-6:
        parts.append(np.zeros((1, 3)))  # the current pose, unless history already ends there
    if sample.future is not None:
        parts.append(sample.future_array())
    return np.concatenate(parts, 0)


def segments_from_datasets(
    dirs: Iterable[str | os.PathLike],
    max_segments: int | None = None,
    split: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """All 0.5 s segments (history and future) of every sample, in reading order."""
    from autovla.data.manifest import iter_samples

    chunks: list[np.ndarray] = []
    total = 0
    bar = tqdm(desc="segments", unit="seg", disable=not progress)
    for d in dirs:
        for sample in iter_samples(d, split=split, check_duplicates=False):
            seg = segments_from_trajectories(sample_trajectory(sample), start_at_origin=False)
            chunks.append(seg.astype(np.float32))
            total += len(seg)
            bar.update(len(seg))
            if max_segments is not None and total >= max_segments:
                break
        if max_segments is not None and total >= max_segments:
            break
    bar.close()
    if not chunks:
        raise ValueError(f"no samples found in {[str(d) for d in dirs]}")
    seg = np.concatenate(chunks, 0).astype(np.float64)
    return seg[:max_segments] if max_segments is not None else seg


def fit_from_datasets(
    dirs: Iterable[str | os.PathLike],
    size: int = 2048,
    tol: float = 0.05,
    seed: int = 0,
    *,
    max_segments: int | None = None,
    split: str | None = None,
    **kwargs,
) -> Codebook:
    """Fit on every sample's history + future in one or more dataset directories."""
    dirs = [str(d) for d in dirs]
    seg = segments_from_datasets(dirs, max_segments, split, kwargs.get("progress", True))
    return fit_codebook(seg, size, tol, seed, sources=dirs, **kwargs)
