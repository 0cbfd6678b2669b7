"""The expert driver: its rollout is the ground-truth future of every sample.

It drives along its route path with IDM (leaders found by occupancy), keeps the speed limit
and a curvature speed limit, stops for red lights and busy crosswalks, yields to crossing
or oncoming traffic at conflict zones (gap acceptance), and changes lanes when the route
needs it or a lane is blocked by a static obstacle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autovla.geometry import wrap_angle
from autovla.sim.agents import EGO_FRONT, EGO_LENGTH, EGO_WIDTH, IDM, EgoState, lateral_step
from autovla.sim.map import Path
from autovla.sim.world import DT, MAX_DECEL, World, path_leader

LAT_ACCEL = 2.0  # m/s^2 allowed in curves
CURVE_DECEL = 1.5  # m/s^2 used to slow before curves
JERK = 3.0  # m/s^3 normal jerk limit; emergencies use EMERGENCY_JERK
EMERGENCY_JERK = 15.0
STOP_DECEL = 2.0  # m/s^2 planned deceleration toward stop points
STOP_MARGIN = 1.5  # m short of a stop line / crosswalk / conflict zone


@dataclass
class Conflict:
    """Where the ego route crosses another agent's path: s-ranges on both paths."""

    agent: int
    ego_s0: float
    ego_s1: float
    other_s0: float
    other_s1: float


def find_conflicts(route: Path, agents: list, radius: float = 3.0) -> list[Conflict]:
    """Crossings (heading difference > 30 degrees) between the route and each agent's path."""
    out = []
    r = route.xy[::2]
    rh = route.heading[::2]
    for j, a in enumerate(agents):
        if a.static or a.kind == "pedestrian":
            continue
        o = a.path.xy[::2]
        oh = a.path.heading[::2]
        d = np.hypot(r[:, None, 0] - o[None, :, 0], r[:, None, 1] - o[None, :, 1])
        cross = (d < radius) & (np.cos(rh[:, None] - oh[None, :]) < np.cos(np.radians(30)))
        if not cross.any():
            continue
        ri, oi = np.nonzero(cross)
        out.append(
            Conflict(
                j, ri.min() * 2 * 0.5, ri.max() * 2 * 0.5, oi.min() * 2 * 0.5, oi.max() * 2 * 0.5
            )
        )
    return out


@dataclass
class Expert:
    """Expert state on its route: arc length s of the rear axle, offset d, speed v."""

    route: Path
    speed_limit: float
    lane_width: float
    lane_offsets: list[float]  # d of the lanes it may use (route lane = 0.0)
    s: float = 0.0
    d: float = 0.0
    d_dot: float = 0.0
    d_target: float = 0.0
    v: float = 0.0
    a: float = 0.0
    idm: IDM = field(default_factory=lambda: IDM(headway=1.5, s0=3.0, a_max=1.5, b=2.5))
    conflicts: list[Conflict] = field(default_factory=list)
    yielding: set[int] = field(default_factory=set)

    def pose(self) -> np.ndarray:
        p = self.route.pose(self.s, self.d)
        p[2] = wrap_angle(p[2] + np.arctan2(self.d_dot, max(self.v, 1.0)))
        return p

    def ego_state(self) -> EgoState:
        x, y, yaw = self.pose()
        return EgoState(float(x), float(y), float(yaw), self.v, self.a)

    def sync(self, ego: EgoState) -> None:
        """Take over from an arbitrary ego state (closed loop): project onto the route."""
        s, d = self.route.project(np.array([ego.x, ego.y]))
        self.s, self.d = float(s), float(d)
        h = float(np.interp(self.s, self.route.s, np.unwrap(self.route.heading)))
        self.v, self.a = ego.v, ego.a
        self.d_dot = ego.v * np.sin(wrap_angle(ego.yaw - h))

    # --- decisions -----------------------------------------------------------------------
    def _speed_cap(self) -> float:
        ahead = np.arange(0.0, 3.0 * self.v + 25.0, 1.0)
        k = np.abs(np.interp(self.s + ahead, self.route.s, self.route.kappa))
        v_curve = np.sqrt(LAT_ACCEL / np.maximum(k, 1e-4))
        return float(min(self.speed_limit, np.min(np.sqrt(v_curve**2 + 2 * CURVE_DECEL * ahead))))

    def _lane_free(self, world: World, d_new: float) -> bool:
        for a in world.agents:
            s, d = self.route.project(a.pose()[:2])
            if abs(d - d_new) < self.lane_width * 0.6 and -20.0 < s - self.s < 30.0:
                return False
        return True

    def _blocked(self, world: World) -> bool:
        """A static obstacle ahead in the current target lane."""
        horizon = max(60.0, 6.0 * self.v)
        for a in world.agents:
            if not a.static or a.kind == "pedestrian":
                continue
            s, d = self.route.project(a.pose()[:2])
            if (
                abs(d - self.d_target) < self.lane_width / 2 + a.width / 2
                and 0 < s - self.s < horizon
            ):
                return True
        return False

    def _choose_lane(self, world: World) -> None:
        if self.v < 3.0:
            return
        options = sorted(self.lane_offsets, key=lambda o: (abs(o - self.d_target), -o))
        if self._blocked(world):
            for o in options:
                if abs(o - self.d_target) > 0.1 and abs(o - self.d_target) < 1.5 * self.lane_width:
                    old = self.d_target
                    self.d_target = o
                    if not self._blocked(world) and self._lane_free(world, o):
                        return
                    self.d_target = old
            return
        if abs(self.d_target) > 0.1:  # the route lane (offset 0) is where we need to be
            step = np.sign(-self.d_target) * self.lane_width
            new = self.d_target + step
            if abs(new) < 0.3 * self.lane_width:
                new = 0.0
            old = self.d_target
            self.d_target = new
            if self._blocked(world) or not self._lane_free(world, new):
                self.d_target = old

    def _yield_gap(self, world: World) -> float:
        """Stop short of a conflict zone while a crossing agent would arrive too close in time.

        Times assume the ego crosses at its curve speed; once yielding to an agent it keeps
        yielding until that agent has left the zone (no stop-and-go on a flickering window).
        """
        front = self.s + EGO_FRONT
        gap = np.inf
        for c in self.conflicts:
            if front > c.ego_s0 - 0.5:  # committed (or past)
                continue
            a = world.agents[c.agent]
            a_front, a_rear = a.s + a.length / 2, a.s - a.length / 2
            if a_rear > c.other_s1:
                self.yielding.discard(c.agent)
                continue
            k = np.abs(np.interp([c.ego_s0, c.ego_s1], self.route.s, self.route.kappa)).max()
            v_cross = max(min(self.speed_limit, np.sqrt(LAT_ACCEL / max(k, 1e-4))), 3.0)
            t_in = (c.ego_s0 - front) / max((self.v + v_cross) / 2, 1.0)
            t_out = t_in + (c.ego_s1 - c.ego_s0 + EGO_LENGTH) / v_cross + 1.0
            va = max(a.v, 0.1)
            ta_in = (c.other_s0 - a_front) / va
            ta_out = (c.other_s1 - a_rear) / va
            if c.agent in self.yielding or (ta_in < t_out + 2.0 and ta_out > t_in - 1.0):
                self.yielding.add(c.agent)
                gap = min(gap, c.ego_s0 - front - 3.0)
        return gap

    def accel(self, world: World, snap=None) -> float:
        snap = world.snapshot() if snap is None else snap
        front = self.s + EGO_FRONT
        gap, v_lead = path_leader(
            self.route, front, self.d, self.d_target, EGO_WIDTH, snap, -1, yield_handled=True
        )
        rule = min(world.rule_obstacles("ego", self.route, front, self.v), self._yield_gap(world))
        self.idm.v_des = self._speed_cap()
        acc = self.idm.accel(self.v, gap, v_lead)
        if np.isfinite(rule):
            # a stop point: follow a speed profile that reaches zero smoothly at the point
            d = max(rule - STOP_MARGIN, 0.0)
            if np.sqrt(2 * STOP_DECEL * d) < 0.8 * d:
                v_t = np.sqrt(2 * STOP_DECEL * d)
                a_ff = -STOP_DECEL * self.v / max(v_t, 0.1)
            else:
                v_t, a_ff = 0.8 * d, -0.8 * self.v
            acc = min(acc, a_ff + 1.2 * (v_t - self.v))
        acc = float(np.clip(acc, -MAX_DECEL, self.idm.a_max))
        jerk = EMERGENCY_JERK if acc < -4.5 else JERK
        return float(np.clip(acc, self.a - jerk * DT, self.a + jerk * DT))

    def step(self, world: World, dt: float = DT, snap=None) -> None:
        """Decide and move one step (the world's agents are advanced by the caller)."""
        self._choose_lane(world)
        acc = self.accel(world, snap)
        self._advance(acc, dt)

    def _advance(self, acc: float, dt: float) -> None:
        v_new = max(0.0, self.v + acc * dt)
        self.s += 0.5 * (self.v + v_new) * dt
        self.a = (v_new - self.v) / dt
        self.v = v_new
        self.d, self.d_dot = lateral_step(self.d, self.d_dot, self.d_target, dt)
