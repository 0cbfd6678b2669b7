"""Open-loop plan scoring the NAVSIM way, batched over plans.

A plan (10 poses at 0.5 s, ego frame) is prefixed with the current pose, interpolated to
10 Hz and tracked by a kinematic bicycle model (acceleration lag 0.2 s, steering lag 0.05 s).
The first HORIZON seconds are scored (4 s, as NAVSIM; the 5th second is not scored) against
non-reactive agents read from the sample's sidecar:
NC (no at-fault collision), DAC (drivable area), TTC, comfort, EP (progress relative to the
expert), plus red-light and pedestrian-yield compliance (1 = no violation, reported apart:
`strict` = pdms x red_light x pedestrian folds them in).
PDMS = NC x DAC x (5 EP + 5 TTC + 2 C) / 12.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from autovla.geometry import box_corners, points_in_polygon, polygons_overlap, wrap_angle
from autovla.sim.agents import (
    EGO_CENTER,
    EGO_LENGTH,
    EGO_REAR,
    EGO_WIDTH,
    MAX_STEER,
    WHEELBASE,
)

DT = 0.1
HORIZON_STEPS = 40  # 4 s scored
SIDECAR_STEPS = 51  # 5 s of agent states at 10 Hz
AGENT_KINDS = ("vehicle", "pedestrian", "traffic_cone", "barrier")
GRID_RES = 0.25
GRID_X0, GRID_Y0 = -32.0, -64.0
GRID_SHAPE = (640, 512)  # rows along x, columns along y
F_DRIVABLE, F_LANE, F_JUNCTION = 1, 2, 4
ACC_LAG, STEER_LAG = 0.2, 0.05
LOOKAHEAD_STEPS = 8  # pure-pursuit target 0.8 s ahead on the reference
SPEED_GAIN, POSITION_GAIN = 1.0, 0.6  # 1/s, 1/s^2
# comfort bounds (NAVSIM): lon accel range, |lat accel|, |jerk|, |lon jerk|, |yaw rate|, |yaw acc|
LON_ACC = (-4.05, 2.40)
LAT_ACC, JERK, LON_JERK, YAW_RATE, YAW_ACC = 4.89, 8.37, 4.13, 0.95, 1.93
TTC_SHIFTS = (0, 3, 6, 9)  # steps of 0.1 s
STOPPED = 0.05  # m/s


@dataclass
class ScoringData:
    """Everything needed to score plans for one sample, in its ego frame."""

    grid: np.ndarray  # (640, 512) uint8 flags
    agents: np.ndarray  # (A, 51, 3) centre poses at 10 Hz from now
    sizes: np.ndarray  # (A, 2) length, width
    kinds: np.ndarray  # (A,) index into AGENT_KINDS
    route: np.ndarray  # (K, 2) expert route centreline, 1 m spacing
    ego: np.ndarray  # (2,) current speed, acceleration
    expert: np.ndarray  # (10, 3) expert future
    stop_lines: np.ndarray  # (L, 2, 2)
    stop_heading: np.ndarray  # (L,)
    red: np.ndarray  # (L, 51) bool
    crosswalks: np.ndarray  # (C, 4, 2)
    # the expert plan's route progress (metric cache, written at export; computed if absent)
    expert_progress: np.ndarray | None = None

    def grid_flags(self, xy: np.ndarray) -> np.ndarray:
        """Flags of ego-frame points (..., 2); 0 outside the grid (off-road)."""
        r = np.floor((xy[..., 0] - GRID_X0) / GRID_RES).astype(np.int64)
        c = np.floor((xy[..., 1] - GRID_Y0) / GRID_RES).astype(np.int64)
        ok = (r >= 0) & (r < GRID_SHAPE[0]) & (c >= 0) & (c < GRID_SHAPE[1])
        return np.where(
            ok, self.grid[np.clip(r, 0, GRID_SHAPE[0] - 1), np.clip(c, 0, GRID_SHAPE[1] - 1)], 0
        )

    def save(self, path: Path) -> None:
        from autovla.io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            arrays = {fl.name: getattr(self, fl.name) for fl in fields(self)}
            np.savez_compressed(f, **{k: v for k, v in arrays.items() if v is not None})


@dataclass
class PlanScores:
    pdms: np.ndarray
    nc: np.ndarray
    dac: np.ndarray
    ttc: np.ndarray
    comfort: np.ndarray
    ep: np.ndarray
    red_light: np.ndarray
    pedestrian: np.ndarray

    @property
    def strict(self) -> np.ndarray:
        return self.pdms * self.red_light * self.pedestrian

    def row(self, i: int) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)[i]) for f in fields(self)}


def load_scoring(root: Path, sample) -> ScoringData:
    """Read a sample's scoring sidecar (NPZ, no pickle)."""
    if not sample.scoring:
        raise ValueError(f"sample {sample.id!r} has no scoring sidecar (field 'scoring')")
    path = Path(root) / sample.scoring
    if not path.is_file():
        raise FileNotFoundError(f"scoring sidecar of sample {sample.id!r} not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        names = [f.name for f in fields(ScoringData) if f.name != "expert_progress"]
        missing = [n for n in names if n not in z.files]
        if missing:
            raise ValueError(f"{path}: sidecar lacks {', '.join(missing)}")
        extra = {"expert_progress": z["expert_progress"]} if "expert_progress" in z.files else {}
        return ScoringData(**{n: z[n] for n in names}, **extra)


def score_sample(root: Path, sample, plans: np.ndarray) -> PlanScores:
    return score_plans(load_scoring(root, sample), plans)


# --- tracking ---------------------------------------------------------------------------
def reference(plans: np.ndarray, steps: int) -> np.ndarray:
    """Plans (N, T, 3) at 0.5 s, prefixed with the origin, linearly interpolated to 10 Hz."""
    n, t = plans.shape[:2]
    full = np.concatenate([np.zeros((n, 1, 3)), plans], 1)
    full[..., 2] = np.unwrap(full[..., 2], axis=1)
    tk = np.arange(steps + 1) * DT
    src = np.arange(t + 1) * 0.5
    i = np.clip(np.searchsorted(src, tk, side="right") - 1, 0, t - 1)
    f = (tk - src[i]) / 0.5
    ref = full[:, i] * (1 - f)[None, :, None] + full[:, i + 1] * f[None, :, None]
    beyond = tk > src[-1]  # extrapolate along the last segment
    if beyond.any():
        last = full[:, -1] - full[:, -2]
        ref[:, beyond] = (
            full[:, -1:, :] + last[:, None, :] * ((tk[beyond] - src[-1]) / 0.5)[None, :, None]
        )
    return ref


def _speed_profile(plans: np.ndarray, v0: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference speed at 10 Hz: central differences at the 2 Hz nodes (the current speed at
    t = 0), linearly interpolated, so the feed-forward acceleration has no spikes."""
    n, t = plans.shape[:2]
    p = np.concatenate([np.zeros((n, 1, 2)), plans[..., :2]], 1)
    seg = np.hypot(*np.diff(p, axis=1).transpose(2, 0, 1)) / 0.5  # (n, t) segment speeds
    nodes = np.empty((n, t + 1))
    nodes[:, 0] = v0
    nodes[:, 1:-1] = (seg[:, :-1] + seg[:, 1:]) / 2
    nodes[:, -1] = seg[:, -1]
    tk = np.minimum(np.arange(steps + 1) * DT, t * 0.5)
    src = np.arange(t + 1) * 0.5
    i = np.clip(np.searchsorted(src, tk, side="right") - 1, 0, t - 1)
    f = (tk - src[i]) / 0.5
    v_ref = nodes[:, i] * (1 - f) + nodes[:, i + 1] * f
    a_ref = (nodes[:, i + 1] - nodes[:, i]) / 0.5
    return v_ref, a_ref


def track(
    plans: np.ndarray,
    v0: np.ndarray | float,
    a0: np.ndarray | float = 0.0,
    steps: int = HORIZON_STEPS,
    steer0: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Bicycle-model tracking of plans: states (N, steps + 1, 6) = x, y, yaw, v, a, steer."""
    plans = np.asarray(plans, dtype=np.float64)
    n = len(plans)
    ref = reference(plans, steps + LOOKAHEAD_STEPS)
    v = np.broadcast_to(np.asarray(v0, dtype=np.float64), (n,)).copy()
    v_ref, a_ref = _speed_profile(plans, v, steps + LOOKAHEAD_STEPS)
    a = np.broadcast_to(np.asarray(a0, dtype=np.float64), (n,)).copy()
    steer = np.broadcast_to(np.asarray(steer0, dtype=np.float64), (n,)).copy()
    ka, ks = 1 - np.exp(-DT / ACC_LAG), 1 - np.exp(-DT / STEER_LAG)
    # time-major copies so each step reads contiguous rows (the loop is overhead-bound)
    rx, ry = np.ascontiguousarray(ref[..., 0].T), np.ascontiguousarray(ref[..., 1].T)
    vr, ar = np.ascontiguousarray(v_ref.T), np.ascontiguousarray(a_ref.T)
    out = np.empty((6, steps + 1, n))
    x, y, yaw = np.zeros(n), np.zeros(n), np.zeros(n)
    out[:, 0] = x, y, yaw, v, a, steer
    stop_ref = vr[1:] < 0.2
    ff = ar + SPEED_GAIN * vr  # feed-forward part of the acceleration command
    for k in range(steps):
        c, s = np.cos(yaw), np.sin(yaw)
        # longitudinal: feed-forward plus PD on the along-track error to the reference now
        acc = ff[k] - SPEED_GAIN * v + POSITION_GAIN * (c * (rx[k] - x) + s * (ry[k] - y))
        stop = stop_ref[k] & (v < 0.2)  # stopping controller
        if stop.any():
            acc[stop] = -v[stop] / DT
        # lateral: pure pursuit toward the reference LOOKAHEAD_STEPS ahead
        tx, ty = rx[k + LOOKAHEAD_STEPS] - x, ry[k + LOOKAHEAD_STEPS] - y
        ld2 = tx * tx + ty * ty
        curv = (2.0 * (c * ty - s * tx)) / (ld2 + 1e-6) * (ld2 > 0.25)
        cmd = np.arctan(WHEELBASE * curv)
        np.clip(cmd, -MAX_STEER, MAX_STEER, out=cmd)
        a += (acc - a) * ka
        steer += (cmd - steer) * ks
        vdt = v * DT
        x = x + vdt * c
        y = y + vdt * s
        yaw = yaw + vdt * np.tan(steer) / WHEELBASE
        v = np.maximum(v + a * DT, 0.0)
        out[0, k + 1], out[1, k + 1], out[2, k + 1] = x, y, yaw
        out[3, k + 1], out[4, k + 1], out[5, k + 1] = v, a, steer
    out = out.transpose(2, 1, 0)
    out[..., 2] = wrap_angle(out[..., 2])
    return out


# --- metrics ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _savgol(order: int, window: int = 7, poly: int = 2) -> np.ndarray:
    m = window // 2
    k = np.arange(-m, m + 1, dtype=np.float64)
    a = np.vander(k, poly + 1, increasing=True)
    return np.linalg.pinv(a)[order] * np.prod(np.arange(1, order + 1)) / DT**order


def _filtered(x: np.ndarray, order: int, window: int = 7) -> np.ndarray:
    """Savitzky-Golay derivative along axis 1 with odd reflection at the ends."""
    m = window // 2
    left = 2 * x[:, :1] - x[:, m:0:-1]
    right = 2 * x[:, -1:] - x[:, -2 : -m - 2 : -1]
    p = np.concatenate([left, x, right], 1)
    win = np.lib.stride_tricks.sliding_window_view(p, window, axis=1)
    return win @ _savgol(order, window)


def comfort(states: np.ndarray) -> np.ndarray:
    yaw = np.unwrap(states[..., 2], axis=1)
    v = _filtered(states[..., 3], 0)
    lon = _filtered(states[..., 3], 1)
    yaw_rate = _filtered(yaw, 1)
    yaw_acc = _filtered(yaw, 2)
    lat = v * yaw_rate
    lon_jerk = _filtered(lon, 1)
    jerk = np.hypot(lon_jerk, _filtered(lat, 1))
    ok = (lon > LON_ACC[0]) & (lon < LON_ACC[1]) & (np.abs(lat) < LAT_ACC) & (jerk < JERK)
    ok &= (
        (np.abs(lon_jerk) < LON_JERK) & (np.abs(yaw_rate) < YAW_RATE) & (np.abs(yaw_acc) < YAW_ACC)
    )
    return ok.all(1).astype(np.float64)


def _route_progress(route: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Arc length along the route of points (N, 2) (projection on the nearest segment)."""
    if len(route) < 2:
        return np.zeros(len(xy))
    seg = np.diff(route, axis=0)
    s0 = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
    rel = xy[:, None, :] - route[None, :-1]
    ll = (seg**2).sum(-1)
    t = np.clip((rel * seg).sum(-1) / np.maximum(ll, 1e-9), 0.0, 1.0)
    d = ((rel - t[..., None] * seg) ** 2).sum(-1)
    i = np.argmin(d, 1)
    r = np.arange(len(xy))
    return s0[i] + t[r, i] * np.sqrt(ll[i])


def _rel_angle(ego: np.ndarray, obj_xy: np.ndarray) -> np.ndarray:
    """|Bearing| of object centres as seen from the ego centre, relative to its heading."""
    return np.abs(
        wrap_angle(
            np.arctan2(obj_xy[..., 1] - ego[..., 1], obj_xy[..., 0] - ego[..., 0]) - ego[..., 2]
        )
    )


def _agent_cache(data: ScoringData) -> dict:
    """Per-sample arrays computed once (like NAVSIM's metric cache), kept on the object."""
    cache = data.__dict__.get("_cache")
    if cache is None:
        ag = data.agents.astype(np.float64)
        sizes = data.sizes.astype(np.float64).reshape(-1, 2)
        cache = {
            "ag": ag,
            "corners": box_corners(ag, sizes[:, None, 0], sizes[:, None, 1]),
            "speed": np.hypot(*np.gradient(ag[..., :2], DT, axis=1).transpose(2, 0, 1))
            if ag.shape[1] > 1
            else np.zeros(ag.shape[:2]),
            "radius": np.hypot(sizes[:, 0], sizes[:, 1]) / 2,
            "static": data.kinds >= 2,
        }
        data.__dict__["_cache"] = cache
        if data.expert_progress is None:
            expert = _evaluate(data, data.expert[None].astype(np.float64))
            data.expert_progress = expert["progress"][:1].astype(np.float64)
        cache["expert_progress"] = float(data.expert_progress[0])
    return cache


def score_plans(data: ScoringData, plans: np.ndarray) -> PlanScores:
    """Score plans (N, 10, 3) (ego frame, 0.5 s ... 5 s) against one sample."""
    plans = np.asarray(plans, dtype=np.float64)
    if plans.ndim != 3 or plans.shape[1:] != (10, 3):
        raise ValueError(f"plans must have shape (N, 10, 3), got {plans.shape}")
    if not np.isfinite(plans).all():
        raise ValueError("plans contain NaN or infinite values")
    expert_progress = _agent_cache(data)["expert_progress"]
    m = _evaluate(data, plans)
    nc, dac, ttc, comf = m["nc"], m["dac"], m["ttc"], m["comfort"]
    best = np.maximum(m["progress"], expert_progress)
    ep = np.where(best < 5.0, 1.0, m["progress"] / np.maximum(best, 1e-9))
    ep = np.where(nc * dac == 0, 0.0, ep)
    pdms = nc * dac * (5 * ep + 5 * ttc + 2 * comf) / 12
    return PlanScores(pdms, nc, dac, ttc, comf, ep, m["red_light"], m["pedestrian"])


def _evaluate(data: ScoringData, plans: np.ndarray) -> dict[str, np.ndarray]:
    """Per-plan NC, DAC, TTC, comfort, route progress, red-light and pedestrian checks."""
    n = len(plans)
    st = track(plans, float(data.ego[0]), float(data.ego[1]))
    T = HORIZON_STEPS + 1
    poses = st[..., :3]
    corners = box_corners(poses, EGO_LENGTH, EGO_WIDTH, EGO_REAR)  # (N+1, T, 4, 2)
    flags = data.grid_flags(corners)
    on_road = (flags & F_DRIVABLE).astype(bool).all(-1)  # (N+1, T)
    dac = on_road.all(1).astype(np.float64)
    c = np.cos(poses[..., 2])
    s = np.sin(poses[..., 2])
    centre = np.stack(
        [poses[..., 0] + EGO_CENTER * c, poses[..., 1] + EGO_CENTER * s, poses[..., 2]], -1
    )
    cflags = data.grid_flags(centre[..., :2])
    multi_lane = (cflags & F_LANE) == 0
    junction = (cflags & F_JUNCTION) > 0
    speed = st[..., 3]

    A = len(data.sizes)
    nc = np.ones(n)
    ttc = np.ones(n)
    if A:
        cache = data.__dict__["_cache"]  # filled by _agent_cache before any evaluation
        ag, a_corners, a_speed = cache["ag"], cache["corners"], cache["speed"]
        static, r_ag = cache["static"], cache["radius"]
        r_ego = np.hypot(EGO_LENGTH, EGO_WIDTH) / 2
        # collisions over the scored horizon
        dist = np.hypot(
            centre[:, None, :, 0] - ag[None, :, :T, 0], centre[:, None, :, 1] - ag[None, :, :T, 1]
        )
        cand = dist < r_ego + r_ag[None, :, None]
        hit = np.zeros_like(cand)
        ni, ai, ti = np.nonzero(cand)
        if len(ni):
            hit[ni, ai, ti] = polygons_overlap(corners[ni, ti], a_corners[ai, ti])
        first = np.where(hit.any(2), hit.argmax(2), -1)  # (N+1, A)
        ignored = np.zeros((n, A), dtype=bool)
        nn, aa = np.nonzero(first >= 0)
        if len(nn):
            tt = first[nn, aa]
            ego_pose = centre[nn, tt]
            obj = ag[aa, tt]
            behind = _rel_angle(ego_pose, obj[:, :2]) > np.radians(150)
            front_edge = corners[nn, tt][:, [0, 3]]  # FL, FR
            front_hit = polygons_overlap(front_edge, a_corners[aa, tt])
            lateral_fault = multi_lane[nn, tt] | ~on_road[nn, tt]
            stopped = static[aa] | (a_speed[aa, tt] < STOPPED)
            at_fault = (speed[nn, tt] > STOPPED) & ~behind & (stopped | front_hit | lateral_fault)
            penalty = np.where(data.kinds[aa] <= 1, 0.0, 0.5)
            for i in np.nonzero(at_fault)[0]:
                nc[nn[i]] = min(nc[nn[i]], penalty[i])
            ignored[nn[~at_fault], aa[~at_fault]] = True
        # time to collision: shift the ego forward at constant speed
        for shift in TTC_SHIFTS:
            tk = np.minimum(np.arange(T) + shift, ag.shape[1] - 1)
            off = (speed * shift * DT)[..., None]
            sc = corners + np.stack([c, s], -1)[..., None, :] * off[..., None]
            sxy = centre[..., :2] + np.stack([c, s], -1) * off
            d2 = np.hypot(
                sxy[:, None, :, 0] - ag[None, :, tk, 0], sxy[:, None, :, 1] - ag[None, :, tk, 1]
            )
            cand = (
                (d2 < r_ego + r_ag[None, :, None])
                & (speed[:, None, :] > 5e-3)
                & ~ignored[..., None]
            )
            ni, ai, ti = np.nonzero(cand)
            if not len(ni):
                continue
            ov = polygons_overlap(sc[ni, ti], a_corners[ai, tk[ti]])
            ni, ai, ti = ni[ov], ai[ov], ti[ov]
            ang = _rel_angle(centre[ni, ti], ag[ai, tk[ti], :2])
            risky = multi_lane[ni, ti] | ~on_road[ni, ti] | junction[ni, ti]
            fail = (ang < np.radians(30)) | (risky & (ang < np.radians(150)))
            ttc[ni[fail]] = 0.0
    comf = comfort(st)
    route = data.route.astype(np.float64)
    start = _route_progress(route, np.zeros((1, 2)))[0]
    prog = np.maximum(_route_progress(route, poses[:, -1, :2]) - start, 0.0) * nc * dac
    return {
        "nc": nc,
        "dac": dac,
        "ttc": np.minimum(ttc, 1.0),
        "comfort": comf,
        "progress": prog,
        "red_light": _red_light(data, corners, poses),
        "pedestrian": _pedestrian(data, corners, centre, speed),
    }


def _red_light(data: ScoringData, corners: np.ndarray, poses: np.ndarray) -> np.ndarray:
    out = np.ones(len(corners))
    if not len(data.stop_lines):
        return out
    front = (corners[..., 0, :] + corners[..., 3, :]) / 2  # (N, T, 2)
    T = front.shape[1]
    for line, h, red in zip(data.stop_lines, data.stop_heading, data.red, strict=True):
        direction = np.array([np.cos(h), np.sin(h)])
        seg = line[1] - line[0]
        ll = max(float(seg @ seg), 1e-9)
        sd = (front - line[0]) @ direction
        along = ((front - line[0]) @ seg) / ll
        crossing = (sd[:, :-1] < 0) & (sd[:, 1:] >= 0)
        within = (along[:, 1:] > -0.2) & (along[:, 1:] < 1.2)
        aligned = np.cos(poses[:, 1:, 2] - h) > 0.5
        viol = crossing & within & aligned & red[None, 1:T].astype(bool)
        out[viol.any(1)] = 0.0
    return out


def _pedestrian(
    data: ScoringData, corners: np.ndarray, centre: np.ndarray, speed: np.ndarray
) -> np.ndarray:
    """0 where the ego drives (> 0.5 m/s) over a crosswalk with a pedestrian on it within 8 m."""
    out = np.ones(len(corners))
    peds = np.nonzero(data.kinds == 1)[0]
    if not len(data.crosswalks) or not len(peds):
        return out
    T = corners.shape[1]
    pxy = data.agents[peds, :T, :2].astype(np.float64)  # (P, T, 2)
    for cw in data.crosswalks:
        on = points_in_polygon(pxy, cw)  # (P, T)
        if not on.any():
            continue
        ego_on = polygons_overlap(corners, cw[None, None])  # (N, T)
        near = (
            np.hypot(
                centre[:, None, :, 0] - pxy[None, ..., 0], centre[:, None, :, 1] - pxy[None, ..., 1]
            )
            < 8.0
        )
        busy = (near & on[None]).any(1)
        out[(ego_on & busy & (speed > 0.5)).any(1)] = 0.0
    return out


def plan_scores_table(scores: PlanScores) -> dict[str, float]:
    """Means of each metric (for reports)."""
    return {f.name: float(np.mean(getattr(scores, f.name))) for f in fields(scores)}


__all__ = [
    "WHEELBASE",
    "PlanScores",
    "ScoringData",
    "load_scoring",
    "score_plans",
    "score_sample",
    "track",
]
