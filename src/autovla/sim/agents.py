"""Agents of the embedded world: lane-following vehicles (IDM), pedestrians, static objects,
and the ego's kinematic bicycle model.

Every non-ego agent moves along a `Path` (arc length s, lateral offset d); a lane change is a
critically damped move of d toward `d_target`, so no path switching is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autovla.geometry import wrap_angle
from autovla.sim.map import Path

# Ego vehicle (NAVSIM's Pacifica): the pose is the rear axle.
EGO_LENGTH = 5.176
EGO_WIDTH = 2.297
EGO_REAR = 1.127  # rear axle to rear edge
EGO_FRONT = EGO_LENGTH - EGO_REAR  # rear axle to front edge
EGO_CENTER = EGO_LENGTH / 2 - EGO_REAR  # rear axle to box centre
WHEELBASE = 3.089
MAX_STEER = np.pi / 3
LANE_CHANGE_OMEGA = 1.1  # 1/s, lateral dynamics of lane changes (about 4 s per change)


@dataclass
class IDM:
    """Intelligent Driver Model parameters (SI units)."""

    v_des: float = 13.0
    headway: float = 1.5  # s
    s0: float = 2.5  # m, standstill gap
    a_max: float = 1.5
    b: float = 2.0  # comfortable deceleration

    def accel(self, v: float, gap: float = np.inf, v_lead: float = 0.0) -> float:
        # above the desired speed (a lower limit ahead) slow down gently, not at IDM's rate
        free = max(1.0 - (v / max(self.v_des, 0.1)) ** 4, -2.0 / self.a_max)
        if not np.isfinite(gap):
            return self.a_max * free
        dv = v - v_lead
        s_star = self.s0 + max(0.0, v * self.headway + v * dv / (2 * np.sqrt(self.a_max * self.b)))
        return self.a_max * (free - (s_star / max(gap, 0.1)) ** 2)


@dataclass
class Agent:
    """A vehicle, pedestrian or static object; pose is the box centre on path at (s, d)."""

    id: str
    kind: str  # an OBJECT_CLASSES name
    path: Path
    s: float
    length: float
    width: float
    height: float
    color: tuple[int, int, int]
    v: float = 0.0
    a: float = 0.0
    d: float = 0.0
    d_dot: float = 0.0
    d_target: float = 0.0
    static: bool = False
    idm: IDM = field(default_factory=IDM)
    obeys_lights: bool = True
    brake_at: float | None = None  # scripted hard braking start time (s)
    brake_decel: float = 6.0
    lane_change_at: float | None = None
    lane_change_to: float = 0.0
    start_at: float = 0.0  # pedestrians start walking then
    cutting_in: bool = False

    def pose(self) -> np.ndarray:
        key = (self.s, self.d, self.d_dot, self.v)
        if getattr(self, "_cache_key", None) != key:  # poses are read several times a tick
            p = self.path.pose(self.s, self.d)
            p[2] = wrap_angle(p[2] + np.arctan2(self.d_dot, max(self.v, 1.0)))
            self._cache_key, self._cache = key, p
        return self._cache.copy()

    @property
    def braking(self) -> bool:
        return self.a < -1.0 and self.v > 0.3


@dataclass
class EgoState:
    """The ego's rear-axle pose and motion in the world frame."""

    x: float
    y: float
    yaw: float
    v: float
    a: float = 0.0
    steer: float = 0.0

    def pose(self) -> np.ndarray:
        return np.array([self.x, self.y, self.yaw])

    def center(self) -> np.ndarray:
        return np.array(
            [
                self.x + EGO_CENTER * np.cos(self.yaw),
                self.y + EGO_CENTER * np.sin(self.yaw),
                self.yaw,
            ]
        )


def lateral_step(d: float, d_dot: float, target: float, dt: float) -> tuple[float, float]:
    """One step of the critically damped lane-change dynamics."""
    w = LANE_CHANGE_OMEGA
    dd = w * w * (target - d) - 2.0 * w * d_dot
    d_dot = d_dot + dd * dt
    return d + d_dot * dt, d_dot
