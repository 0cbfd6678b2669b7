"""PDM score of plans against a metric cache: simulate, measure, aggregate (NAVSIM v1.1).

`score_plans(cache, plans)` scores each plan as NAVSIM scores a submission: its first 8
poses (4 s) are interpolated to 41 states at 0.1 s, tracked by the LQR controller and
kinematic bicycle from the logged ego state, measured (NC, DAC, DDC, TTC, EP, comfort)
and aggregated; ego progress is normalised by the better of the plan and the cached
PDM-Closed reference, exactly as if each plan were scored beside PDM-Closed alone (so a
batch gives the same numbers as one plan at a time). See docs/scoring.md.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import shapely

from autovla.scoring import metrics as M
from autovla.scoring.cache import (
    CARPARK_AREA,
    INTERSECTION,
    LANE,
    LANE_CONNECTOR,
    N_AGENT_TYPES,
    ROADBLOCK,
    MetricCache,
    MetricCacheError,
    cache_path,
)
from autovla.scoring.interpolate import SCORED_POSES, reference_states
from autovla.scoring.map_index import PolygonIndex
from autovla.scoring.tracker import initial_state, simulate

SCORE_NAMES = ("pdms", "nc", "dac", "ddc", "ttc", "ep", "comfort", "progress")


@dataclass
class PDMResults:
    """Per-plan sub-scores (N,); NaN for a plan that could not be scored."""

    pdms: np.ndarray
    nc: np.ndarray
    dac: np.ndarray
    ddc: np.ndarray
    ttc: np.ndarray
    ep: np.ndarray
    comfort: np.ndarray
    progress: np.ndarray  # raw progress along the centerline (m)

    def row(self, i: int) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)[i]) for f in fields(self)}

    @classmethod
    def nan(cls, n: int) -> PDMResults:
        return cls(*(np.full(n, np.nan) for _ in fields(cls)))


# --- per-cache derived data (built once, kept on the cache object) ---------------------
def map_context(cache: MetricCache) -> M.MapContext:
    ctx = cache.derived.get("map")
    if ctx is None:
        t = cache.map_types
        ctx = M.MapContext(
            index=PolygonIndex(cache.map_polygons),
            lanes=(t == LANE) | (t == LANE_CONNECTOR),
            drivable=(t == ROADBLOCK) | (t == INTERSECTION) | (t == CARPARK_AREA),
            on_route=cache.on_route,
            intersection=t == INTERSECTION,
            centerline=shapely.LineString(cache.centerline[:, :2]),
        )
        shapely.prepare(ctx.centerline)
        cache.derived["map"] = ctx
    return ctx


def scoring_observation(cache: MetricCache) -> M.Observation:
    """The logged tracks as NAVSIM's scoring observation (all classes, nothing ignored)."""
    obs = cache.derived.get("observation")
    if obs is None:
        a = len(cache.track_ids)
        agent = cache.track_types < N_AGENT_TYPES
        seen = np.isfinite(cache.boxes[..., 0])  # (51, A)
        first = np.argmax(seen, axis=0)
        v0 = cache.velocity[first, np.arange(a)] if a else np.zeros((0, 2))
        with np.errstate(invalid="ignore"):
            slow = ~(np.hypot(v0[:, 0], v0[:, 1]) > M.STOPPED_SPEED)  # NaN counts as stopped
        obs = M.Observation(
            boxes=cache.boxes, agent=agent, stopped=~agent | slow, ignored=np.zeros(a, bool)
        )
        cache.derived["observation"] = obs
    return obs


# --- scoring -----------------------------------------------------------------------------
def measure(ctx: M.MapContext, obs: M.Observation, states: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of simulated states (N, 41, 8) before progress normalisation."""
    coords = M.ego_coords(states)
    areas = M.ego_areas(ctx, states, coords)
    return {
        "nc": M.no_at_fault_collision(obs, states, coords, areas),
        "dac": M.drivable_area_compliance(areas),
        "ddc": M.driving_direction_compliance(coords, areas),
        "ttc": M.time_to_collision(obs, states, coords, areas),
        "comfort": M.comfort(states),
        "progress": M.ego_progress(ctx.centerline, coords),
    }


def simulate_plans(cache: MetricCache, plans: np.ndarray) -> np.ndarray:
    """States (N, 41, 8) of plans (N, >= 8, 3) tracked from the cache's ego state."""
    ref = reference_states(plans, SCORED_POSES)
    return simulate(ref, initial_state(cache.ego, len(ref)))


def score_plans(cache: MetricCache, plans: np.ndarray) -> PDMResults:
    """PDM score of each plan (N, T >= 8, 3) (ego frame, poses at 0.5 s; 4 s are scored).

    A plan with NaN or infinite values gets NaN scores; the others are unaffected.
    """
    plans = np.asarray(plans, dtype=np.float64)
    if plans.ndim != 3 or plans.shape[1] < SCORED_POSES or plans.shape[2] != 3:
        raise ValueError(f"plans must have shape (N, >= {SCORED_POSES}, 3), got {plans.shape}")
    n = len(plans)
    ok = np.isfinite(plans[:, :SCORED_POSES]).all((1, 2))
    out = PDMResults.nan(n)
    if not ok.any():
        return out
    states = simulate_plans(cache, plans[ok])
    m = measure(map_context(cache), scoring_observation(cache), states)
    multiplier = m["nc"] * m["dac"]
    weighted = m["progress"] * multiplier
    best = np.maximum(weighted, cache.pdm_progress)  # each plan beside PDM-Closed
    ep = np.where(
        best > M.PROGRESS_THRESHOLD,
        weighted / np.where(best > 0, best, 1.0),
        np.where(multiplier == 0.0, 0.0, 1.0),
    )
    pdms = M.aggregate(m["nc"], m["dac"], ep, m["ttc"], m["comfort"], m["ddc"])
    for name, value in (("pdms", pdms), ("ep", ep), *m.items()):
        getattr(out, name)[ok] = value
    return out


# --- one sample at a time (training rewards, evaluation) -----------------------------------
CACHED_SCENES = 16  # metric caches kept loaded (with their map index) per process


@functools.lru_cache(maxsize=CACHED_SCENES)
def _load(path: str, mtime_ns: int, size: int) -> MetricCache:
    return MetricCache.load(path)


def load_cache_cached(root: str | os.PathLike, sample) -> MetricCache:
    """`load_cache` with the last few caches (and their derived map index) kept in memory,
    keyed by path, modification time and size; RFT scores the same scenes step after step."""
    path = cache_path(root, sample)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"sample {sample.id!r}, field 'scoring': metric cache not found: {path}"
        ) from None
    try:
        return _load(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    except MetricCacheError as e:
        raise MetricCacheError(f"sample {sample.id!r}, field 'scoring': {e}") from None


def score_sample(root: str | os.PathLike, sample, plans: np.ndarray) -> PDMResults:
    """Score plans (N, >= 8, 3) of a sample against its metric cache (see `score_plans`)."""
    return score_plans(load_cache_cached(root, sample), plans)
