"""Open-loop metrics as plain functions over batches (docs/method.md sections 7 and 9).

Trajectories are (B, T, 2 or 3) in the ego frame at 0.5 s steps (step k is at (k + 1) * 0.5 s).
Per-sample values are returned so callers can group them (scenario type, complexity) and
bootstrap them; means are taken by the caller.

nuScenes BEV collision, two conventions (`convention=`):
* "uniad" (default, the UniAD / ST-P3 evaluation code): the ego box stays aligned with the
  current frame and is translated to each planned position (not rotated with the plan's
  heading); the occupancy holds every annotated vehicle, pedestrian and cyclist present at
  that future time (objects annotated now, with gaps, and objects entering later); it applies
  to every sample whose objects are tracked (`SceneFacts.objects_tracked`), so the rate
  divides by all such samples, with or without objects nearby;
* "rotated" (this project's earlier rule): the ego box rotates with the planned heading, only
  the objects annotated now are followed (up to their first unannotated step), and only
  samples with some object future count.
In both, a step where the ground-truth trajectory itself collides is not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autovla.data.schema import STEP_SECONDS, SceneFacts
from autovla.geometry import box_corners

HORIZONS_S = (1.0, 2.0, 3.0)
CONVENTIONS = ("stp3", "uniad")  # ST-P3: mean over steps up to t; UniAD: the value at t

# nuScenes BEV collision (docs/method.md section 9)
GRID_SIZE = 200  # cells per side
GRID_RES = 0.5  # m per cell, so the grid spans +-50 m
EGO_LENGTH = 4.084  # m
EGO_WIDTH = 1.85  # m
EGO_FORWARD_SHIFT = 0.5  # m, the box centre lies this far ahead of the pose
COLLISION_KINDS = ("vehicle", "pedestrian", "bicycle")
COLLISION_CONVENTIONS = ("uniad", "rotated")


def _check_convention(convention: str) -> None:
    if convention not in COLLISION_CONVENTIONS:
        valid = ", ".join(COLLISION_CONVENTIONS)
        raise ValueError(f"unknown collision convention {convention!r}; valid: {valid}")


def _xy(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    return a[..., :2]


def l2_per_step(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Euclidean position error (B, T) between plans and ground truth (B, T, >=2)."""
    p, g = _xy(pred), _xy(gt)
    if p.shape != g.shape:
        raise ValueError(f"plan shape {p.shape} does not match ground truth {g.shape}")
    return np.linalg.norm(p - g, axis=-1)


def step_index(seconds: float, dt: float = STEP_SECONDS) -> int:
    """Index of the step at `seconds` (step k is at (k + 1) * dt)."""
    return round(seconds / dt) - 1


def at_horizons(
    per_step: np.ndarray,
    convention: str = "stp3",
    horizons: Sequence[float] = HORIZONS_S,
    dt: float = STEP_SECONDS,
) -> dict[float, np.ndarray]:
    """Per-sample values (B,) at each horizon: ST-P3 averages steps up to t, UniAD takes t."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    v = np.asarray(per_step, dtype=np.float64)
    out = {}
    for t in horizons:
        k = step_index(t, dt)
        if k >= v.shape[-1]:
            raise ValueError(f"horizon {t} s needs {k + 1} steps, trajectories have {v.shape[-1]}")
        out[t] = v[..., : k + 1].mean(-1) if convention == "stp3" else v[..., k]
    return out


def ade(pred: np.ndarray, gt: np.ndarray, steps: int | None = None) -> np.ndarray:
    """Average displacement error (B,) over the first `steps` steps (all by default)."""
    return l2_per_step(pred, gt)[:, :steps].mean(-1)


def fde(pred: np.ndarray, gt: np.ndarray, steps: int | None = None) -> np.ndarray:
    """Final displacement error (B,) at step `steps` (the last by default)."""
    e = l2_per_step(pred, gt)
    return e[:, (steps or e.shape[1]) - 1]


# ---------------------------------------------------------------------------- collision
def object_boxes(
    scene: SceneFacts | None, steps: int, convention: str = "uniad"
) -> list[np.ndarray]:
    """Per step, the (N, 4, 2) corners of the vehicles/pedestrians/cyclists there: every
    object annotated at that step ("uniad"), or those annotated now followed up to their first
    unannotated step ("rotated")."""
    _check_convention(convention)
    out: list[list[np.ndarray]] = [[] for _ in range(steps)]
    tracks: list[tuple[list, float, float]] = []
    for o in scene.objects if scene else []:
        if o.kind in COLLISION_KINDS:
            tracks.append((o.future_poses(steps), o.box[3], o.box[4]))
    if convention == "uniad":
        for f in scene.future_objects if scene else []:
            if f.kind in COLLISION_KINDS:
                fut = list(f.future[:steps])
                tracks.append((fut + [None] * (steps - len(fut)), f.size[0], f.size[1]))
    for poses, length, width in tracks:
        for k, p in enumerate(poses):
            if p is None:
                if convention == "rotated":
                    break
                continue
            out[k].append(box_corners(np.asarray(p, dtype=np.float64), length, width))
    return [np.stack(b) if b else np.zeros((0, 4, 2)) for b in out]


def _cell_centres() -> np.ndarray:
    c = (np.arange(GRID_SIZE) + 0.5) * GRID_RES - GRID_SIZE * GRID_RES / 2
    return c


_CENTRES = _cell_centres()


def rasterize(polygons: np.ndarray) -> np.ndarray:
    """Occupancy (GRID_SIZE, GRID_SIZE) [ix, iy] of convex polygons (N, 4, 2): cells whose
    centre lies inside (the BEV grid of the nuScenes convention)."""
    grid = np.zeros((GRID_SIZE, GRID_SIZE), dtype=bool)
    for poly in np.asarray(polygons, dtype=np.float64).reshape(-1, 4, 2):
        lo = np.searchsorted(_CENTRES, poly.min(0))
        hi = np.searchsorted(_CENTRES, poly.max(0))
        if np.any(hi <= lo):
            continue  # outside the grid or thinner than a cell between centres
        xs, ys = _CENTRES[lo[0] : hi[0]], _CENTRES[lo[1] : hi[1]]
        pts = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1)
        grid[lo[0] : hi[0], lo[1] : hi[1]] |= _inside_convex(pts, poly)
    return grid


def _inside_convex(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Points (..., 2) inside (or on) convex polygons (..., 4, 2), broadcast; either winding."""
    edges = np.roll(poly, -1, -2) - poly
    rel = pts[..., None, :] - poly  # (..., 4, 2)
    cross = edges[..., 0] * rel[..., 1] - edges[..., 1] * rel[..., 0]
    return np.all(cross >= 0, -1) | np.all(cross <= 0, -1)


def ego_box(poses: np.ndarray, convention: str = "uniad") -> np.ndarray:
    """Ego corners (T, 4, 2) for poses (T, 3 or 2): the nuScenes box, shifted forward; rotated
    with each pose's heading, or ("uniad") aligned with the current frame, only translated."""
    _check_convention(convention)
    p = np.zeros((len(poses), 3))
    given = np.asarray(poses, dtype=np.float64).reshape(len(p), -1)
    p[:, : min(3, given.shape[1])] = given[:, :3]
    if convention == "uniad":
        p[:, 2] = 0.0
    p[:, 0] += EGO_FORWARD_SHIFT * np.cos(p[:, 2])
    p[:, 1] += EGO_FORWARD_SHIFT * np.sin(p[:, 2])
    return box_corners(p, EGO_LENGTH, EGO_WIDTH)


def _cells_inside(poly: np.ndarray) -> np.ndarray:
    """Centres (M, 2) of the grid cells whose centre lies inside a convex polygon (4, 2)."""
    lo = np.searchsorted(_CENTRES, poly.min(0))
    hi = np.searchsorted(_CENTRES, poly.max(0))
    if np.any(hi <= lo):
        return np.zeros((0, 2))
    xs, ys = _CENTRES[lo[0] : hi[0]], _CENTRES[lo[1] : hi[1]]
    pts = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    return pts[_inside_convex(pts, poly)]


def collisions_per_step(
    poses: np.ndarray, boxes: list[np.ndarray], convention: str = "uniad"
) -> np.ndarray:
    """Whether the ego box at each pose (T, 3) shares a BEV cell with any object (T,).

    Same answer as intersecting `rasterize` grids, but only the ego's few cells are tested
    against the objects, which is ~100x faster than filling 200 x 200 grids."""
    ego = ego_box(poses, convention)
    out = np.zeros(len(ego), dtype=bool)
    for k, objs in enumerate(boxes[: len(ego)]):
        if not len(objs):
            continue
        cells = _cells_inside(ego[k])
        if len(cells):
            inside = _inside_convex(cells[:, None, :], objs[None])  # (M, N)
            out[k] = bool(inside.any())
    return out


def bev_collision(
    pred: np.ndarray,
    gt: np.ndarray,
    scene: SceneFacts | None,
    steps: int = 6,
    convention: str = "uniad",
) -> np.ndarray:
    """Per-step collision flags (steps,) of a plan (T, 3); a step where the ground truth
    itself collides is not counted (labels and boxes disagree there, docs/method.md
    section 9). See the module docstring for the conventions."""
    boxes = object_boxes(scene, steps, convention)
    plan = collisions_per_step(np.asarray(pred)[:steps], boxes, convention)
    truth = collisions_per_step(np.asarray(gt)[:steps], boxes, convention)
    return plan & ~truth


def has_object_futures(scene: SceneFacts | None) -> bool:
    return bool(scene) and any(o.future for o in scene.objects if o.kind in COLLISION_KINDS)


def collision_applies(scene: SceneFacts | None, convention: str = "uniad") -> bool:
    """Whether a sample counts in the collision rate: every sample whose objects are tracked
    ("uniad": the denominator is all of them), or those with some object future ("rotated")."""
    _check_convention(convention)
    if convention == "uniad":
        return scene is not None and scene.objects_tracked
    return has_object_futures(scene)


# ---------------------------------------------------------------------------- statistics
def bootstrap_ci(
    values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval for the mean."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(v.mean()), float(lo), float(hi)


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    paired: bool = True,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean(b) - mean(a), low, high). Paired resamples the same items in both (same samples
    evaluated twice); unpaired resamples each independently."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size == 0 or y.size == 0:
        return (float("nan"),) * 3
    if paired:
        if x.shape != y.shape:
            raise ValueError(f"paired bootstrap needs equal sizes, got {x.size} and {y.size}")
        return bootstrap_ci(y - x, n_boot, alpha, seed)
    rng = np.random.default_rng(seed)
    d = y[rng.integers(0, y.size, (n_boot, y.size))].mean(1) - x[
        rng.integers(0, x.size, (n_boot, x.size))
    ].mean(1)
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return float(y.mean() - x.mean()), float(lo), float(hi)


def latency_percentiles(
    latencies: Sequence[float], q: Sequence[float] = (50, 90, 95, 99)
) -> dict[str, float]:
    """{'p50': ..., 'mean': ..., 'n': ...} in the input's unit (seconds)."""
    v = np.asarray(latencies, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    out = {f"p{int(p)}": float(np.percentile(v, p)) for p in q}
    out.update(mean=float(v.mean()), max=float(v.max()), n=int(v.size))
    return out
