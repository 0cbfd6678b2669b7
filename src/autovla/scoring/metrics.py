"""NAVSIM v1.1's PDM-score metrics on simulated states, batched over plans (named steps).

Each function takes the simulated states (N, T, 8) of `autovla.scoring.tracker` (or what
was derived from them) and returns one value per plan; docs/scoring.md lists the rules.

Geometry is exact: box-box and edge-box intersection by the separating-axis test
(`autovla.geometry.polygons_overlap`, touching counts, as shapely's `intersects`) on the
pairs whose bounding circles meet; point-in-polygon through `PolygonIndex` (strict
interior, as shapely's `contains_xy`). The collision and TTC rules keep NAVSIM's per-track
"ignore after a not-at-fault contact" bookkeeping, which comes down to: for each plan and
track, only the first contact (in time, then projection) decides.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import shapely
from scipy.signal import savgol_filter

from autovla.geometry import polygons_overlap
from autovla.scoring.interpolate import DT
from autovla.scoring.map_index import PolygonIndex
from autovla.scoring.tracker import (
    AX,
    AY,
    HALF_LENGTH,
    HALF_WIDTH,
    HEADING,
    REAR_AXLE_TO_CENTER,
    VX,
    VY,
    X,
    Y,
)

FL, RL, RR, FR, CENTER = range(5)
STOPPED_SPEED = 5e-2  # m/s: collision classification (ego and track)
TTC_STOPPED_SPEED = 5e-3  # m/s: TTC is not checked below this ego speed
TTC_SHIFTS = (0, 3, 6, 9)  # 0.1 s steps: ego projected 0, 0.3, 0.6, 0.9 s ahead
AHEAD_ANGLE = np.deg2rad(30.0)
BEHIND_ANGLE = np.deg2rad(150.0)
DDC_HORIZON = 10  # steps (1 s)
DDC_COMPLIANT, DDC_VIOLATION = 2.0, 6.0  # m
PROGRESS_THRESHOLD = 5.0  # m
WEIGHTS = {"ep": 5.0, "ttc": 5.0, "comfort": 2.0, "ddc": 0.0}
EGO_RADIUS = float(np.hypot(HALF_LENGTH, HALF_WIDTH))
# comfort bounds (strict): lon accel, lat accel, jerk, lon jerk, yaw accel, yaw rate
LON_ACC = (-4.05, 2.40)
LAT_ACC = 4.89
JERK = 8.37
LON_JERK = 4.13
YAW_ACC = 1.93
YAW_RATE = 0.95
COMFORT_CHECKS = ("lon_acc", "lat_acc", "jerk", "lon_jerk", "yaw_acc", "yaw_rate")


# --- inputs ----------------------------------------------------------------------------
@dataclass
class Observation:
    """Boxes of the other objects at 0.1 s from t = 0, in the ego frame.

    boxes (T, A, 5) = x, y, heading, length, width (NaN where a track is absent; T covers
    the scored steps plus 0.9 s for TTC); agent (A,): vehicle, pedestrian or bicycle (an
    at-fault collision scores 0, else 0.5); stopped (A,): a static object or an agent whose
    first-appearance speed is <= 0.05 m/s; ignored (A,): never considered (PDM-Closed's
    tracks overlapping the ego at t = 0).
    """

    boxes: np.ndarray
    agent: np.ndarray
    stopped: np.ndarray
    ignored: np.ndarray
    corners: np.ndarray = field(init=False, repr=False)
    radius: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64)
        a = self.boxes.shape[1]
        self.agent = np.asarray(self.agent, dtype=bool).reshape(a)
        self.stopped = np.asarray(self.stopped, dtype=bool).reshape(a)
        self.ignored = np.asarray(self.ignored, dtype=bool).reshape(a)
        self.corners = box_corners(self.boxes)
        with np.errstate(invalid="ignore"):
            self.radius = np.nanmax(np.hypot(self.boxes[..., 3], self.boxes[..., 4]) / 2, 0) \
                if len(self.boxes) and a else np.zeros(a)  # fmt: skip
        self.radius = np.nan_to_num(self.radius, nan=0.0)


@dataclass
class MapContext:
    """Per-cache map data: the polygon index and which polygons count for what."""

    index: PolygonIndex
    lanes: np.ndarray  # (M,) LANE or LANE_CONNECTOR
    drivable: np.ndarray  # (M,) ROADBLOCK, INTERSECTION or CARPARK_AREA
    on_route: np.ndarray  # (M,) lanes and connectors of the route
    intersection: np.ndarray  # (M,) INTERSECTION
    centerline: shapely.LineString


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners (..., 4, 2) of centred boxes (..., 5): FL, RL, RR, FR."""
    x, y, h, ln, w = np.moveaxis(np.asarray(boxes, dtype=np.float64), -1, 0)
    c, s = np.cos(h), np.sin(h)
    lon = np.array([0.5, -0.5, -0.5, 0.5])
    lat = np.array([0.5, 0.5, -0.5, -0.5])
    dl, dw = ln[..., None] * lon, w[..., None] * lat
    cx = x[..., None] + dl * c[..., None] - dw * s[..., None]
    cy = y[..., None] + dl * s[..., None] + dw * c[..., None]
    return np.stack([cx, cy], -1)


# --- step 1: ego footprint ---------------------------------------------------------------
def ego_coords(states: np.ndarray) -> np.ndarray:
    """(N, T, 5, 2): FL, RL, RR, FR corners and the centre of the ego box at each state."""
    h = states[..., HEADING]
    c, s = np.cos(h), np.sin(h)
    cx = states[..., X] + REAR_AXLE_TO_CENTER * c
    cy = states[..., Y] + REAR_AXLE_TO_CENTER * s
    lon = np.array([HALF_LENGTH, -HALF_LENGTH, -HALF_LENGTH, HALF_LENGTH, 0.0])
    lat = np.array([HALF_WIDTH, HALF_WIDTH, -HALF_WIDTH, -HALF_WIDTH, 0.0])
    x = cx[..., None] + lon * c[..., None] - lat * s[..., None]
    y = cy[..., None] + lon * s[..., None] + lat * c[..., None]
    return np.stack([x, y], -1)


# --- step 2: ego areas -------------------------------------------------------------------
@dataclass
class EgoAreas:
    multiple_lanes: np.ndarray  # (N, T)
    non_drivable: np.ndarray
    oncoming: np.ndarray
    in_intersection: np.ndarray  # rear axle strictly inside an intersection (TTC)


def ego_areas(ctx: MapContext, states: np.ndarray, coords: np.ndarray) -> EgoAreas:
    """Multiple lanes, non-drivable area and oncoming traffic per state (NAVSIM rules)."""
    n, t = coords.shape[:2]
    pts = np.concatenate([coords, states[..., None, :2]], axis=2)  # + rear axle
    pt, poly = ctx.index.query(pts[..., 0], pts[..., 1])
    nt, k = np.divmod(pt, 6)  # state index, point kind (0-3 corners, 4 centre, 5 axle)
    corner = k < 4
    # lanes: how many lanes hold at least one corner, and does one hold all four
    m = max(len(ctx.lanes), 1)
    sel = corner & ctx.lanes[poly]
    key, count = np.unique(nt[sel] * m + poly[sel], return_counts=True)
    owner = key // m
    lanes_touched = np.bincount(owner, minlength=n * t)
    all_four = np.bincount(owner[count == 4], minlength=n * t) > 0
    multiple = (lanes_touched > 1) & ~all_four
    # drivable: every corner in some roadblock, intersection or carpark
    sel = corner & ctx.drivable[poly]
    covered = np.zeros(n * t * 6, dtype=bool)
    covered[pt[sel]] = True
    non_drivable = covered.reshape(n * t, 6)[:, :4].sum(1) < 4
    sel = (k == CENTER) & ctx.on_route[poly]
    on_route = np.zeros(n * t, dtype=bool)
    on_route[nt[sel]] = True
    sel = (k == 5) & ctx.intersection[poly]
    inter = np.zeros(n * t, dtype=bool)
    inter[nt[sel]] = True
    shape = (n, t)
    return EgoAreas(
        multiple.reshape(shape), non_drivable.reshape(shape), ~on_route.reshape(shape),
        inter.reshape(shape),
    )  # fmt: skip


# --- contacts --------------------------------------------------------------------------
def _relative_angle(states: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """Angle (rad, NaN on a zero vector) between the ego heading and the direction from
    the rear axle to an object's centroid (nuPlan's `get_agent_relative_angle`)."""
    dx = centroid[..., 0] - states[..., X]
    dy = centroid[..., 1] - states[..., Y]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.hypot(dx, dy)
        dot = (np.cos(states[..., HEADING]) * dx + np.sin(states[..., HEADING]) * dy) / norm
        return np.arccos(dot)


def boxes_intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether rectangles a and b (K, 4, 2) (corners in order) intersect, touching included.

    The separating-axis test on the four edge directions, with each rectangle reduced to
    its centre and half-extents; equal to shapely's `intersects` up to rounding.
    """
    ca, cb = a.mean(1), b.mean(1)
    ea, fa = (a[:, 0] - a[:, 1]) / 2, (a[:, 1] - a[:, 2]) / 2  # half-length, half-width vectors
    eb, fb = (b[:, 0] - b[:, 1]) / 2, (b[:, 1] - b[:, 2]) / 2
    d = cb - ca
    sep = np.zeros(len(a), dtype=bool)
    for axis in (ea, fa, eb, fb):

        def proj(v, axis=axis):
            return np.abs(v[:, 0] * axis[:, 0] + v[:, 1] * axis[:, 1])

        sep |= proj(d) > proj(ea) + proj(fa) + proj(eb) + proj(fb)
    return ~sep


def _first_contacts(
    ego_poly: np.ndarray, ego_centre: np.ndarray, obs: Observation, times: np.ndarray,
    active: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Contacts between ego rectangles (N, K, 4, 2) and the observation at `times` (K,).

    Returns (plan, k, track) of each plan-track pair's first contact in k order, skipping
    ignored tracks and entries where `active` (N, K) is False.
    """
    empty = np.zeros(0, np.int64)
    c = obs.boxes[times][..., :2]  # (K, A, 2)
    # tracks that never come near any ego position are dropped before the pairwise test
    reach = EGO_RADIUS + obs.radius + 1e-6  # (A,)
    lo, hi = ego_centre.min((0, 1)), ego_centre.max((0, 1))
    with np.errstate(invalid="ignore"):
        near = ((c >= lo - reach[:, None]) & (c <= hi + reach[:, None])).all(-1).any(0)
    keep = np.nonzero(near & ~obs.ignored)[0]
    if not len(keep):
        return empty, empty, empty
    ck = c[:, keep]
    d2 = (ego_centre[:, :, None, 0] - ck[None, ..., 0]) ** 2
    d2 += (ego_centre[:, :, None, 1] - ck[None, ..., 1]) ** 2
    with np.errstate(invalid="ignore"):
        cand = d2 <= reach[keep] ** 2
    cand &= active[..., None]
    ni, ki, aj = np.nonzero(cand)
    if not len(ni):
        return empty, empty, empty
    ai = keep[aj]
    hit = boxes_intersect(ego_poly[ni, ki], obs.corners[times[ki], ai])
    ni, ki, ai = ni[hit], ki[hit], ai[hit]
    # first contact per (plan, track): order by plan, track, then k
    order = np.lexsort((ki, ai, ni))
    ni, ki, ai = ni[order], ki[order], ai[order]
    first = np.ones(len(ni), dtype=bool)
    first[1:] = (ni[1:] != ni[:-1]) | (ai[1:] != ai[:-1])
    return ni[first], ki[first], ai[first]


# --- step 3: no at-fault collision ---------------------------------------------------------
def no_at_fault_collision(
    obs: Observation, states: np.ndarray, coords: np.ndarray, areas: EgoAreas
) -> np.ndarray:
    """1, 0.5 (at fault against a static object) or 0 (against an agent) per plan."""
    n, t = states.shape[:2]
    nc = np.ones(n)
    if not obs.boxes.shape[1]:
        return nc
    times = np.arange(t)
    ni, ti, ai = _first_contacts(coords[:, :, :4], coords[:, :, CENTER], obs, times,
                                 np.ones((n, t), dtype=bool))  # fmt: skip
    if not len(ni):
        return nc
    st = states[ni, ti]
    ego_moving = np.hypot(st[:, VX], st[:, VY]) > STOPPED_SPEED
    box = obs.boxes[ti, ai]
    behind = _relative_angle(st, box[:, :2]) > BEHIND_ANGLE
    front = polygons_overlap(coords[ni, ti][:, [FL, FR]], obs.corners[ti, ai])
    lateral = areas.multiple_lanes[ni, ti] | areas.non_drivable[ni, ti]
    stopped = obs.stopped[ai]
    at_fault = ego_moving & (stopped | (~behind & (front | lateral)))
    score = np.where(obs.agent[ai], 0.0, 0.5)
    np.minimum.at(nc, ni[at_fault], score[at_fault])
    return nc


# --- step 4: drivable area compliance, driving direction compliance ------------------------
def drivable_area_compliance(areas: EgoAreas) -> np.ndarray:
    return np.where(areas.non_drivable.any(1), 0.0, 1.0)


def driving_direction_compliance(coords: np.ndarray, areas: EgoAreas) -> np.ndarray:
    """Largest centre distance driven in oncoming traffic within 1 s: 1 below 2 m, 0.5 below
    6 m, else 0 (reported; weight 0 in the score)."""
    centre = coords[:, :, CENTER]
    step = np.zeros(centre.shape[:2])
    step[:, 1:] = np.linalg.norm(centre[:, 1:] - centre[:, :-1], axis=-1)
    step[~areas.oncoming] = 0.0
    csum = np.concatenate([np.zeros((len(step), 1)), np.cumsum(step, 1)], 1)
    t = np.arange(step.shape[1])
    window = csum[:, t + 1] - csum[:, np.maximum(t - DDC_HORIZON, 0)]
    worst = window.max(1)
    return np.where(worst < DDC_COMPLIANT, 1.0, np.where(worst < DDC_VIOLATION, 0.5, 0.0))


# --- step 5: ego progress --------------------------------------------------------------------
def ego_progress(centerline: shapely.LineString, coords: np.ndarray) -> np.ndarray:
    """Raw progress (m, >= 0) of the box centre along the route centerline, start to end."""
    first = coords[:, 0, CENTER]
    if (first == first[0]).all():  # every plan starts at the logged ego state
        start = shapely.line_locate_point(centerline, shapely.points(first[0]))
    else:
        start = shapely.line_locate_point(centerline, shapely.points(first))
    end = shapely.line_locate_point(centerline, shapely.points(coords[:, -1, CENTER]))
    return np.maximum(end - start, 0.0)


# --- step 6: time to collision ---------------------------------------------------------------
def time_to_collision(
    obs: Observation, states: np.ndarray, coords: np.ndarray, areas: EgoAreas
) -> np.ndarray:
    """0 where the ego, projected 0, 0.3, 0.6 or 0.9 s ahead at its speed, first meets a
    track ahead of it (or not behind it while in several lanes, off the drivable area or
    in an intersection); else 1."""
    n, t = states.shape[:2]
    ttc = np.ones(n)
    if not obs.boxes.shape[1]:
        return ttc
    speed = np.hypot(states[..., VX], states[..., VY])
    h = states[..., HEADING]
    shifts = np.array(TTC_SHIFTS)
    delta = shifts.astype(np.float64) * DT  # s, as NAVSIM computes it
    move = speed[..., None] * delta  # (N, T, S)
    dxy = np.stack([np.cos(h)[..., None] * move, np.sin(h)[..., None] * move], -1)
    poly = coords[:, :, None, :4] + dxy[:, :, :, None, :]  # (N, T, S, 4, 2)
    centre = coords[:, :, None, CENTER] + dxy
    k = t * len(shifts)
    times = (np.arange(t)[:, None] + shifts[None]).reshape(k)
    if times.max() >= len(obs.boxes):
        raise ValueError(f"observation has {len(obs.boxes)} steps; TTC needs {times.max() + 1}")
    active = np.repeat(speed >= TTC_STOPPED_SPEED, len(shifts), axis=1)
    ni, ki, ai = _first_contacts(poly.reshape(n, k, 4, 2), centre.reshape(n, k, 2), obs,
                                 times, active)  # fmt: skip
    if not len(ni):
        return ttc
    ti = ki // len(shifts)
    angle = _relative_angle(states[ni, ti], obs.boxes[times[ki], ai, :2])
    ahead = angle < AHEAD_ANGLE
    behind = angle > BEHIND_ANGLE
    risky = areas.multiple_lanes[ni, ti] | areas.non_drivable[ni, ti]
    risky |= areas.in_intersection[ni, ti]
    ttc[ni[ahead | (risky & ~behind)]] = 0.0
    return ttc


# --- step 7: comfort -----------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def savgol_operator(n: int, window: int, order: int, deriv: int = 0, delta: float = 1.0):
    """The (n, n) matrix W with savgol_filter(x) == x @ W for rows x of length n.

    `scipy.signal.savgol_filter` (mode 'interp') is linear in its input, so filtering the
    identity gives its matrix; applying it is one product instead of a filter call per
    signal (numbers equal to rounding; tests compare with scipy directly).
    """
    w = min(window, n)
    return savgol_filter(np.eye(n), window_length=w, polyorder=order, deriv=deriv,
                         delta=delta, axis=0, mode="interp").T  # fmt: skip


def _phase_unwrap(h: np.ndarray) -> np.ndarray:
    adj = np.zeros_like(h)
    adj[..., 1:] = np.cumsum(np.round(np.diff(h, axis=-1) / (2 * np.pi)), axis=-1)
    return h - 2 * np.pi * adj


def comfort_checks(states: np.ndarray) -> np.ndarray:
    """(N, 6) bool: each comfort check passed (order of COMFORT_CHECKS)."""
    n_time = states.shape[1]
    delta = float(np.diff(np.arange(n_time, dtype=np.float64) * DT).mean())
    ax, ay = states[..., AX], states[..., AY]

    def smooth(x: np.ndarray, window: int) -> np.ndarray:
        return np.round(x @ savgol_operator(n_time, window, 2), 8)

    def jerk(acc: np.ndarray) -> np.ndarray:
        a = smooth(acc, 8)
        return np.round(a @ savgol_operator(n_time, n_time, 2, 1, delta), 8)

    yaw = _phase_unwrap(states[..., HEADING])
    yaw_rate = np.round(yaw @ savgol_operator(n_time, 5, 2, 1, delta), 8)
    yaw_acc = np.round(yaw @ savgol_operator(n_time, 5, 3, 2, delta), 8)
    lon = smooth(ax, n_time)
    lat = smooth(ay, n_time)
    mag = jerk(np.hypot(ax, ay))
    lon_j = jerk(ax)

    def within(x, lo, hi):
        return ((x > lo) & (x < hi)).all(-1)

    return np.stack([
        within(lon, *LON_ACC), within(lat, -LAT_ACC, LAT_ACC), within(mag, -JERK, JERK),
        within(lon_j, -LON_JERK, LON_JERK), within(yaw_acc, -YAW_ACC, YAW_ACC),
        within(yaw_rate, -YAW_RATE, YAW_RATE),
    ], -1)  # fmt: skip


def comfort(states: np.ndarray) -> np.ndarray:
    return comfort_checks(states).all(-1).astype(np.float64)


# --- step 8: aggregation -----------------------------------------------------------------
def normalized_progress(raw: np.ndarray, multiplier: np.ndarray, best: float) -> np.ndarray:
    """EP: progress x NC x DAC over the best such progress (`best` includes the plan's own);
    1 (0 where NC x DAC = 0) when the best is at most 5 m."""
    weighted = raw * multiplier
    if best > PROGRESS_THRESHOLD:
        return weighted / best
    return np.where(multiplier == 0.0, 0.0, 1.0)


def aggregate(nc, dac, ep, ttc, comf, ddc) -> np.ndarray:
    """NC x DAC x (5 EP + 5 TTC + 2 C + 0 DDC) / 12."""
    w = WEIGHTS
    total = w["ep"] * ep + w["ttc"] * ttc + w["comfort"] * comf + w["ddc"] * ddc
    return nc * dac * total / sum(w.values())
