"""The world state and its 10 Hz update: agents react to leaders, red lights and pedestrians.

Leaders are found by occupancy: the points of an agent's path ahead are tested against every
other object's box (the ego included), so car following, cut-ins, crossing traffic and
queues all use one rule. Red lights and occupied crosswalks become virtual stopped obstacles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autovla.geometry import points_in_polygon, wrap_angle
from autovla.sim.agents import (
    EGO_LENGTH,
    EGO_WIDTH,
    Agent,
    EgoState,
    lateral_step,
)
from autovla.sim.map import Path, RoadMap

DT = 0.1
LOOKAHEAD = 70.0  # m of path scanned for leaders
MAX_DECEL = 8.0
YELLOW_DECEL = 3.5  # below this braking need on yellow, stop; else go


@dataclass
class Snapshot:
    """Boxes and speeds of every object at one instant; index -1 is the ego."""

    xy: np.ndarray
    heading: np.ndarray
    length: np.ndarray
    width: np.ndarray
    v: np.ndarray
    kinds: list[str]


def path_leader(
    path: Path,
    s_front: float,
    d0: float,
    d1: float,
    width: float,
    snap: Snapshot,
    skip: int,
    horizon: float = LOOKAHEAD,
    yield_handled: bool = False,
) -> tuple[float, float]:
    """Gap (m) and along-path speed of the nearest object occupying the path ahead.

    With `yield_handled`, moving crossing or oncoming traffic more than 4 m ahead is left to the
    caller's gap acceptance (the expert's yield rule) instead of braking for it as a leader.
    """
    ahead = np.arange(0.0, horizon, 1.0)
    d = d0 + (d1 - d0) * np.clip(ahead / 20.0, 0.0, 1.0)
    pts = path.pose(s_front + ahead, d)
    diff = snap.xy[:, None, :] - pts[None, :, :2]  # (A, K, 2)
    dist2 = (diff**2).sum(-1)
    k = np.argmin(dist2, axis=1)
    a_idx = np.arange(len(k))
    p = pts[k]
    dx, dy = diff[a_idx, k, 0], diff[a_idx, k, 1]
    c, s = np.cos(p[:, 2]), np.sin(p[:, 2])
    along = ahead[k] + c * dx + s * dy
    lat = -s * dx + c * dy
    rel = wrap_angle(snap.heading - p[:, 2])
    ext_lon = np.abs(np.cos(rel)) * snap.length / 2 + np.abs(np.sin(rel)) * snap.width / 2
    ext_lat = np.abs(np.sin(rel)) * snap.length / 2 + np.abs(np.cos(rel)) * snap.width / 2
    hit = (
        (np.abs(lat) < width / 2 + ext_lat + 0.3)
        & (along + ext_lon > 0.0)
        & (along - ext_lon > -2.0)
    )
    if yield_handled:
        crossing = (np.cos(rel) < np.cos(np.radians(30))) & (snap.v > 1.0)  # or oncoming
        hit &= ~(crossing & (along - ext_lon > 4.0))
    if 0 <= skip < len(hit) or skip == -1:
        hit[skip] = False
    if not hit.any():
        return np.inf, 0.0
    gaps = np.where(hit, along - ext_lon, np.inf)
    j = int(np.argmin(gaps))
    return float(gaps[j]), float(snap.v[j] * np.cos(rel[j]))


@dataclass
class World:
    map: RoadMap
    agents: list[Agent]
    ego: EgoState
    t: float = 0.0
    # per path: s of each stop line / crosswalk it crosses (cached)
    _stops: dict = field(default_factory=dict, repr=False)
    _walks: dict = field(default_factory=dict, repr=False)
    light_memory: dict = field(default_factory=dict, repr=False)

    # --- geometry caches -------------------------------------------------------------
    def stop_positions(self, path: Path) -> list[tuple[float, int]]:
        """(s, light index) where the path crosses a stop line in its approach direction."""
        key = id(path)
        if key not in self._stops:
            out = []
            for sl in self.map.stop_lines:
                seg = sl.p1 - sl.p0
                t = np.clip(((path.xy - sl.p0) @ seg) / (seg @ seg), 0.0, 1.0)
                dist = np.hypot(*(path.xy - (sl.p0 + t[:, None] * seg)).T)
                i = int(np.argmin(dist))
                if dist[i] < 0.6 and np.cos(path.heading[i] - sl.heading) > 0.9:
                    out.append((float(path.s[i]), sl.light))
            self._stops[key] = out
        return self._stops[key]

    def crosswalk_positions(self, path: Path) -> list[tuple[float, int]]:
        key = id(path)
        if key not in self._walks:
            out = []
            for ci, cw in enumerate(self.map.crosswalks):
                inside = points_in_polygon(path.xy, cw)
                if inside.any():
                    out.append((float(path.s[np.argmax(inside)]), ci))
            self._walks[key] = out
        return self._walks[key]

    # --- state ---------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        poses = [a.pose() for a in self.agents] + [self.ego.center()]
        arr = np.array(poses).reshape(-1, 3)
        return Snapshot(
            xy=arr[:, :2],
            heading=arr[:, 2],
            length=np.array([a.length for a in self.agents] + [EGO_LENGTH]),
            width=np.array([a.width for a in self.agents] + [EGO_WIDTH]),
            v=np.array([a.v for a in self.agents] + [self.ego.v]),
            kinds=[a.kind for a in self.agents] + ["ego"],
        )

    def peds_on_crosswalk(self, ci: int, margin: float = 1.5) -> bool:
        cw = self.map.crosswalks[ci]
        centre = cw.mean(0)
        grown = centre + (cw - centre) * (1.0 + margin / max(np.ptp(cw[:, 1]), np.ptp(cw[:, 0])))
        pts = [a.pose()[:2] for a in self.agents if a.kind == "pedestrian"]
        return bool(pts) and bool(points_in_polygon(np.array(pts), grown).any())

    def rule_obstacles(self, key: str, path: Path, s_front: float, v: float) -> float:
        """Gap to the nearest virtual obstacle: a red (or stoppable yellow) light, busy walk."""
        gap = np.inf
        for s_line, li in self.stop_positions(path):
            dist = s_line - s_front
            if dist < -0.5:
                continue
            state = self.map.lights[li].state(self.t)
            mem = (key, li)
            if state == "green":
                self.light_memory.pop(mem, None)
                continue
            if mem not in self.light_memory:
                need = v * v / (2 * max(dist, 0.1))
                limit = YELLOW_DECEL if state == "yellow" else MAX_DECEL
                self.light_memory[mem] = "go" if need > limit else "stop"
            if self.light_memory[mem] == "stop":
                gap = min(gap, dist)
        for s_cw, ci in self.crosswalk_positions(path):
            dist = s_cw - s_front
            if dist > -0.5 and self.peds_on_crosswalk(ci):
                gap = min(gap, dist - 1.0)
        return gap

    # --- update --------------------------------------------------------------------------
    def agent_accels(self, snap: Snapshot) -> list[float]:
        out = []
        for i, a in enumerate(self.agents):
            if a.static:
                out.append(0.0)
                continue
            if a.kind == "pedestrian":
                out.append(0.0)
                continue
            if a.brake_at is not None and self.t >= a.brake_at:
                out.append(-a.brake_decel if a.v > 0 else 0.0)
                continue
            gap, v_lead = path_leader(a.path, a.s + a.length / 2, a.d, a.d_target, a.width, snap, i)
            if a.obeys_lights:
                rule = self.rule_obstacles(a.id, a.path, a.s + a.length / 2, a.v)
                if rule < gap:
                    gap, v_lead = rule, 0.0
            acc = a.idm.accel(a.v, gap, v_lead)
            out.append(float(np.clip(acc, -MAX_DECEL, a.idm.a_max)))
        return out

    def advance_agents(self, accels: list[float], dt: float = DT) -> None:
        for a, acc in zip(self.agents, accels, strict=True):
            if a.static:
                continue
            if a.kind == "pedestrian":
                walking = self.t >= a.start_at and a.s < a.path.length
                a.v = a.idm.v_des if walking else 0.0
                a.s += a.v * dt
                continue
            if a.lane_change_at is not None and self.t >= a.lane_change_at:
                a.d_target = a.lane_change_to
                a.lane_change_at = None
                a.cutting_in = True
            if a.cutting_in and abs(a.d - a.d_target) < 0.3:
                a.cutting_in = False
            v_new = max(0.0, a.v + acc * dt)
            a.s += 0.5 * (a.v + v_new) * dt
            a.a = (v_new - a.v) / dt
            a.v = v_new
            a.d, a.d_dot = lateral_step(a.d, a.d_dot, a.d_target, dt)
