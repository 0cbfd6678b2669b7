"""Meta-action labels from a future trajectory (docs/method.md section 5).

The label reads "{lateral} with {longitudinal}", e.g. "turn left with a deceleration", or
"STOP". Thresholds are the reference's.
"""

from __future__ import annotations

import numpy as np

from autovla.data.schema import STEP_SECONDS

STOP_SPEED = 0.3  # m/s
CONSTANT_SPEED_BAND = 0.8  # m/s
FORWARD_BAND = 2.0  # m, |y| below this at every pose: no lateral manoeuvre
TURN_OFFSET = 4.0  # m, |y_final| above this: a turn, else a lane change


def longitudinal_action(v0: float, v_end: float) -> str:
    """Longitudinal meta-action from the speed now and at the end of the horizon."""
    if v0 < STOP_SPEED and v_end < STOP_SPEED:
        return "stop"
    if v_end < STOP_SPEED:
        return "a deceleration to zero"
    if abs(v_end - v0) < CONSTANT_SPEED_BAND:
        return "a constant speed"
    if v_end > v0:
        return "a quick acceleration" if v_end > 2.0 * v0 else "an acceleration"
    return "a quick deceleration" if v0 > 2.0 * v_end else "a deceleration"


def lateral_action(future_xy: np.ndarray) -> str:
    """Lateral meta-action from future positions (T, 2), ego frame (y left)."""
    y = np.asarray(future_xy, dtype=np.float64)[:, 1]
    if np.all(np.abs(y) < FORWARD_BAND):
        return "move forward"
    side = "left" if y[-1] > 0 else "right"
    return f"turn {side}" if abs(y[-1]) > TURN_OFFSET else f"change lane to {side}"


def end_speed(future: np.ndarray, dt: float = STEP_SECONDS) -> float:
    """Speed over the last step of a future trajectory (T, >=2)."""
    f = np.asarray(future, dtype=np.float64)
    prev = f[-2, :2] if len(f) > 1 else np.zeros(2)
    return float(np.hypot(*(f[-1, :2] - prev)) / dt)


def meta_action(future: np.ndarray, v0: float, dt: float = STEP_SECONDS) -> str:
    """The meta-action label of a future trajectory (T, 2 or 3) given the current speed v0."""
    f = np.asarray(future, dtype=np.float64)
    lon = longitudinal_action(float(v0), end_speed(f, dt))
    if lon == "stop":
        return "STOP"
    return f"{lateral_action(f[:, :2])} with {lon}"
