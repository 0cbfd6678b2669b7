"""PDM-Closed, NAVSIM's reference planner, whose progress normalises ego progress.

Named steps (docs/scoring.md, "PDM-Closed"):

1. `planner_observation`: the detections at t = 0 within 100 m of the ego centre (at most
   50 vehicles, 25 pedestrians, 10 bicycles and 50 static objects, nearest first), agents
   moving at constant velocity (speed along the box heading, flipped when the velocity
   points backwards), positions refreshed every 0.2 s; red lights on route connectors as
   static polygons; objects overlapping the ego at t = 0 ignored from then on.
2. `proposal_paths`: the route centerline and its copies shifted 1 m right and left.
3. `unroll`: for each path, 5 IDM policies (target 0.2 .. 1.0 x the starting lane's speed
   limit, 15 m/s without one; exponent 10, headway 1.5 s, minimum gap 1 m, acceleration
   1.5, deceleration 3 m/s^2, Euler at 0.1 s), the leading obstacle searched in the
   path's corridor at even steps only (step 1 reuses the empty step-0 row, so it brakes).
4. The 15 proposals are tracked and scored with the same simulator and scorer as plans
   (against the planner observation); the best is extended to 5 s.

`attach_pdm_closed` stores the result in a metric cache with `pdm_progress`: its raw
progress x NC x DAC when scored as a plan against the logged observation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
import shapely.ops

from autovla.scoring import metrics as M
from autovla.scoring.cache import N_AGENT_TYPES, MetricCache
from autovla.scoring.interpolate import DT
from autovla.scoring.pdm_score import map_context, measure, scoring_observation
from autovla.scoring.tracker import (
    EGO_LENGTH,
    EGO_WIDTH,
    HALF_LENGTH,
    HALF_WIDTH,
    REAR_AXLE_TO_CENTER,
    initial_state,
    normalize_angle,
    simulate,
)

PROPOSAL_STEPS = 40  # 4 s of proposals are scored
TRAJECTORY_STEPS = 50  # the chosen one is extended to 5 s
MAP_RADIUS = 100.0  # m around the ego centre
MAX_OBJECTS = {0: 50, 1: 25, 2: 10}  # vehicles, pedestrians, bicycles
MAX_STATIC = 50
OBSERVATION_STRIDE = 2  # agent positions are refreshed every 0.2 s
LEADER_STRIDE = 2  # the leading obstacle is searched at even steps only
LATERAL_OFFSETS = (0.0, -1.0, 1.0)  # m, left positive
SPEED_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
FALLBACK_SPEED = 15.0  # m/s
IDM_EXPONENT = 10
HEADWAY = 1.5  # s
MIN_GAP = 1.0  # m
ACCEL_MAX, DECEL_MAX = 1.5, 3.0  # m/s^2


@dataclass
class Detections:
    """What the planner sees at t = 0 (ego frame): ids, TRACK_TYPES indices, boxes (A, 5)
    x, y, heading, length, width, velocities (A, 2) (zero for static objects)."""

    ids: list[str]
    types: np.ndarray
    boxes: np.ndarray
    velocity: np.ndarray

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        a = len(self.ids)
        self.types = np.asarray(self.types, dtype=np.int8).reshape(a)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(a, 5)
        self.velocity = np.asarray(self.velocity, dtype=np.float64).reshape(a, 2)

    @classmethod
    def from_cache(cls, cache: MetricCache) -> Detections:
        """The scoring observation's tracks present at t = 0."""
        here = np.isfinite(cache.boxes[0, :, 0])
        return cls(
            [i for i, h in zip(cache.track_ids, here, strict=True) if h],
            cache.track_types[here],
            cache.boxes[0, here],
            np.nan_to_num(cache.velocity[0, here]),
        )


# --- step 1: the planner's observation -------------------------------------------------
@dataclass
class PlannerObservation:
    """Objects as polygons at every 0.1 s step (refreshed every 0.2 s), for the leader
    search, and as an `Observation` for scoring the proposals."""

    polygons: np.ndarray  # (T, B) shapely polygons: objects, then red lights
    centroid: np.ndarray  # (T, B, 2)
    leader_speed: np.ndarray  # (B,) |v| of agents, 0 for static objects and red lights
    heading: np.ndarray  # (B,) box heading at t = 0 (0 for red lights)
    ignored: np.ndarray  # (B,) overlapping the ego at t = 0
    scoring: M.Observation


def _ego_box(pose: np.ndarray) -> np.ndarray:
    """Ego boxes (..., 5) (centre, heading, length, width) at rear-axle poses (..., 3)."""
    pose = np.asarray(pose, dtype=np.float64)
    c, s = np.cos(pose[..., 2]), np.sin(pose[..., 2])
    return np.stack([
        pose[..., 0] + REAR_AXLE_TO_CENTER * c, pose[..., 1] + REAR_AXLE_TO_CENTER * s,
        pose[..., 2], np.full(c.shape, EGO_LENGTH), np.full(c.shape, EGO_WIDTH),
    ], -1)  # fmt: skip


def _ego_polygon(pose: np.ndarray) -> shapely.Polygon:
    return shapely.Polygon(M.box_corners(_ego_box(pose)))


def select_detections(det: Detections) -> np.ndarray:
    """Indices of the detections the planner keeps (radius, class limits, nearest first)."""
    centre = np.array([REAR_AXLE_TO_CENTER, 0.0])
    dist = np.hypot(det.boxes[:, 0] - centre[0], det.boxes[:, 1] - centre[1])
    near = np.nonzero(dist <= MAP_RADIUS)[0]
    keep = []
    for cls, limit in MAX_OBJECTS.items():
        idx = near[det.types[near] == cls]
        keep.append(idx[np.argsort(dist[idx], kind="stable")][:limit])
    idx = near[det.types[near] >= N_AGENT_TYPES]
    keep.append(idx[np.argsort(dist[idx], kind="stable")][:MAX_STATIC])
    return np.concatenate(keep).astype(np.int64)


def planner_observation(
    det: Detections, red_lights: Sequence[shapely.Geometry] = (), steps: int = 52
) -> PlannerObservation:
    keep = select_detections(det)
    boxes = det.boxes[keep]
    vel = det.velocity[keep]
    agent = det.types[keep] < N_AGENT_TYPES
    speed = np.where(agent, np.hypot(vel[:, 0], vel[:, 1]), 0.0)
    forward = np.abs(normalize_angle(boxes[:, 2] - np.arctan2(vel[:, 1], vel[:, 0]))) < np.pi / 2
    direction = np.where(forward, boxes[:, 2], normalize_angle(boxes[:, 2] + np.pi))
    dxy = np.stack([np.cos(direction), np.sin(direction)], -1) * speed[:, None]
    t = (np.arange(steps) // OBSERVATION_STRIDE) * OBSERVATION_STRIDE * DT  # 0.2 s refresh
    seq = np.repeat(boxes[None], steps, axis=0)
    seq[..., :2] += t[:, None, None] * dxy[None]
    corners = M.box_corners(seq)
    reds = np.array(list(red_lights), dtype=object)
    r = len(reds)
    polys = np.empty((steps, len(keep) + r), dtype=object)
    polys[:, : len(keep)] = shapely.polygons(corners) if len(keep) else np.empty((steps, 0))
    centroid = np.zeros((steps, len(keep) + r, 2))
    centroid[:, : len(keep)] = seq[..., :2]
    if r:
        polys[:, len(keep) :] = reds[None]
        centroid[:, len(keep) :] = shapely.get_coordinates(shapely.centroid(reds))[None]
    ego = _ego_polygon(np.zeros(3))
    hits = shapely.intersects(ego, polys[0]) if polys.shape[1] else np.zeros(0, bool)
    ignored = hits.copy()
    if r:  # a red light is ignored only when the ego lies wholly inside it
        ignored[len(keep) :] = shapely.within(ego, reds)
    moving = np.hypot(vel[:, 0], vel[:, 1]) > M.STOPPED_SPEED
    scoring = M.Observation(
        boxes=seq, agent=agent, stopped=~(agent & moving), ignored=ignored[: len(keep)]
    )
    return PlannerObservation(
        polygons=polys,
        centroid=centroid,
        leader_speed=np.concatenate([speed, np.zeros(r)]),
        heading=np.concatenate([boxes[:, 2], np.zeros(r)]),
        ignored=ignored,
        scoring=scoring,
    )


# --- step 2: paths ---------------------------------------------------------------------
class PDMPath:
    """A discrete path (K, 3): progress is the arc length of its vertices."""

    def __init__(self, poses: np.ndarray):
        p = np.asarray(poses, dtype=np.float64).copy()
        keep = np.concatenate([[True], np.hypot(*np.diff(p[:, :2], axis=0).T) > 0])
        p = p[keep]  # repeated vertices would make the interpolation undefined
        p[:, 2] = np.unwrap(p[:, 2])
        self.poses = p
        seg = np.hypot(*np.diff(p[:, :2], axis=0).T)
        self.progress = np.concatenate([[0.0], np.cumsum(seg)])
        self.length = float(self.progress[-1])
        self.line = shapely.LineString(p[:, :2])

    def interpolate(self, s: np.ndarray) -> np.ndarray:
        """Poses (..., 3) at progress s (clipped to [1e-5, length]), heading normalised."""
        s = np.clip(np.asarray(s, dtype=np.float64), 1e-5, self.length)
        out = np.stack([np.interp(s, self.progress, self.poses[:, i]) for i in range(3)], -1)
        out[..., 2] = normalize_angle(out[..., 2])
        return out

    def project(self, xy: np.ndarray) -> np.ndarray:
        return shapely.line_locate_point(self.line, shapely.points(np.asarray(xy)))

    def corridor(self, start: float, end: float) -> shapely.Geometry:
        """The path between two progress values, buffered by half the ego width."""
        start, end = np.clip([start, end], 0.0, self.length)
        inside = (start <= self.progress) & (self.progress <= end)
        if inside.sum() > 1:
            line = shapely.LineString(self.poses[inside, :2])
        else:
            line = shapely.ops.substring(self.line, start, end)
        return shapely.buffer(line, HALF_WIDTH, cap_style="square")


def proposal_paths(centerline: np.ndarray) -> list[PDMPath]:
    c = np.asarray(centerline, dtype=np.float64)
    out = []
    for off in LATERAL_OFFSETS:
        shifted = c.copy()
        shifted[:, 0] += np.cos(c[:, 2] + np.pi / 2) * off
        shifted[:, 1] += np.sin(c[:, 2] + np.pi / 2) * off
        out.append(PDMPath(shifted))
    return out


# --- step 3: IDM unrolling ---------------------------------------------------------------
def _idm_step(x, v, lead, target):
    """One Euler step of the IDM (arrays over policies)."""
    x_lead, v_lead, rear = lead[:, 0], lead[:, 1], lead[:, 2]
    s_star = MIN_GAP + v * HEADWAY + v * (v - v_lead) / (2 * np.sqrt(ACCEL_MAX * DECEL_MAX))
    s_alpha = np.maximum(x_lead - x - rear, MIN_GAP)
    acc = ACCEL_MAX * (1 - (v / target) ** IDM_EXPONENT - (s_star / s_alpha) ** 2)
    acc = np.minimum(np.maximum(acc, -DECEL_MAX), ACCEL_MAX)  # targets > 0, gaps >= 1 m
    return x + DT * v, v + DT * acc


class _Unroller:
    """IDM proposals along one path, for several target speeds at once."""

    def __init__(self, path: PDMPath, obs: PlannerObservation, targets: np.ndarray, v0: float):
        self.path, self.obs, self.targets = path, obs, np.asarray(targets, dtype=np.float64)
        k = len(targets)
        n = TRAJECTORY_STEPS + 1
        self.x = np.zeros((k, n))
        self.v = np.zeros((k, n))
        self.lead = np.zeros((k, n, 3))
        self.poses = np.zeros((k, n, 3))
        s0 = float(path.project(np.zeros((1, 2)))[0])
        self.x[:, 0], self.v[:, 0] = s0, v0
        self.poses[:, 0] = path.interpolate(s0)
        reach = s0 + np.max(targets) * TRAJECTORY_STEPS * DT
        self.corridor = path.corridor(s0, reach)
        shapely.prepare(self.corridor)

    def _leaders(self, rows: np.ndarray, t: int) -> None:
        if t % LEADER_STRIDE:
            self.lead[rows, t] = self.lead[rows, t - 1]
            return
        polys = self.obs.polygons[t]
        hit = shapely.intersects(self.corridor, polys) if len(polys) else np.zeros(0, bool)
        hit &= ~self.obs.ignored
        cand = np.nonzero(hit)[0]
        free = np.array([self.path.length, 0.0, HALF_LENGTH])
        if not len(cand):
            self.lead[rows, t] = free
            return
        prog = self.path.project(self.obs.centroid[t, cand])
        ego_s = self.x[rows, t - 1]
        ahead = prog[None, :] > ego_s[:, None]  # (rows, candidates)
        poses = self.poses[rows, t - 1]
        ego = shapely.polygons(M.box_corners(_ego_box(poses)))
        d = shapely.distance(ego[:, None], polys[cand][None, :])
        d = np.where(ahead, d, np.inf)
        j = np.argmin(d, axis=1)
        r = np.arange(len(rows))
        some = ahead.any(1)
        rel = normalize_angle(self.obs.heading[cand[j]] - poses[:, 2])
        lead = np.stack([ego_s + d[r, j], self.obs.leader_speed[cand[j]] * np.cos(rel),
                         np.zeros(len(rows))], -1)  # fmt: skip
        self.lead[rows, t] = np.where(some[:, None], lead, free)

    def run(self, rows: np.ndarray, t0: int, t1: int) -> None:
        """Advance `rows` through steps t0 .. t1 - 1."""
        for t in range(t0, t1):
            self._leaders(rows, t)
            x, v = _idm_step(self.x[rows, t - 1], self.v[rows, t - 1], self.lead[rows, t],
                             self.targets[rows])  # fmt: skip
            self.x[rows, t], self.v[rows, t] = x, v
            self.poses[rows, t] = self.path.interpolate(x)


def pdm_closed_trajectory(
    cache: MetricCache, detections: Detections | None = None,
    red_lights: Sequence[shapely.Geometry] = (),
) -> np.ndarray:  # fmt: skip
    """PDM-Closed's poses (51, 3) at 0.1 s from 0 to 5 s (ego frame)."""
    det = Detections.from_cache(cache) if detections is None else detections
    obs = planner_observation(det, red_lights)
    limit = cache.speed_limit
    base = limit if limit is not None and np.isfinite(limit) and limit > 0 else FALLBACK_SPEED
    targets = np.array(SPEED_FRACTIONS) * base
    rows = np.arange(len(targets))
    unrollers = []
    for path in proposal_paths(cache.centerline):
        u = _Unroller(path, obs, targets, float(cache.ego[3]))
        u.run(rows, 1, PROPOSAL_STEPS + 1)
        unrollers.append(u)
    proposals = np.concatenate([u.poses[:, : PROPOSAL_STEPS + 1] for u in unrollers])
    states = simulate(proposals, initial_state(cache.ego, len(proposals)))
    m = measure(map_context(cache), obs.scoring, states)
    multiplier = m["nc"] * m["dac"]
    weighted = m["progress"] * multiplier
    ep = M.normalized_progress(m["progress"], multiplier, float(weighted.max()))
    scores = M.aggregate(m["nc"], m["dac"], ep, m["ttc"], m["comfort"], m["ddc"])
    best = int(np.argmax(scores))
    u = unrollers[best // len(targets)]
    row = np.array([best % len(targets)])
    u.run(row, PROPOSAL_STEPS + 1, TRAJECTORY_STEPS + 1)
    return u.poses[row[0]].copy()


def reference_progress(cache: MetricCache, trajectory: np.ndarray) -> float:
    """Raw progress x NC x DAC of a 0.1 s trajectory (>= 41, 3) scored as a plan."""
    ref = np.asarray(trajectory, dtype=np.float64)[None, : PROPOSAL_STEPS + 1]
    states = simulate(ref, initial_state(cache.ego, 1))
    m = measure(map_context(cache), scoring_observation(cache), states)
    return float(m["progress"][0] * m["nc"][0] * m["dac"][0])


def attach_pdm_closed(
    cache: MetricCache, detections: Detections | None = None,
    red_lights: Sequence[shapely.Geometry] = (),
) -> MetricCache:  # fmt: skip
    """Fill `pdm_closed` and `pdm_progress` of a cache built with placeholders."""
    traj = pdm_closed_trajectory(cache, detections, red_lights)
    cache.pdm_closed = traj
    cache.pdm_progress = reference_progress(cache, traj)
    cache.validate()
    return cache
