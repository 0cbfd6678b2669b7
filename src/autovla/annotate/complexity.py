"""Which scenes need slow thinking: one documented rule over what every source provides.

Dual-thinking SFT needs a fast/slow mix; the embedded world labels its scenario types, real
data has no label. The rule below uses only fields every converter writes (the ego state,
the instruction, the future, and `scene.objects` where the source has annotations), so it
labels NAVSIM, nuScenes and Waymo samples alike. A scene is complex when any trigger fires;
the triggers that fired are kept in `meta["complexity_reasons"]`, so anyone can see why a
scene was chosen (docs/annotation.md lists them with their thresholds).

Triggers (ego frame, x forward, y left; the future is the ground-truth 5 s):
* `vulnerable_road_user`: a pedestrian or cyclist within VRU_RANGE of the ego, not behind it;
* `object_near_path`: an object ahead whose current box centre lies within PATH_MARGIN of
  the future path and that stands still (slower than MOVING) or crosses it (a velocity
  component across the ego's heading above MOVING): something to steer or stop for. Traffic
  moving the ego's way is the lead-vehicle trigger's business;
* `close_lead_vehicle`: a vehicle in the ego lane ahead closer than LEAD_HEADWAY seconds at
  the current speed (plus LEAD_MIN_GAP);
* `turn`: the future turns (meta-action lateral "turn ...") or the heading changes by more
  than TURN_HEADING over the horizon;
* `lane_change`: the future changes lane;
* `braking`: the future decelerates (meta-action longitudinal: any deceleration) or the
  ego brakes harder than BRAKE_ACCEL now;
* `instruction`: the instruction is not "go straight" (turn left / right; "unknown" is not a
  trigger: it carries no information).
"""

from __future__ import annotations

import numpy as np

from autovla.data.meta_actions import meta_action
from autovla.data.schema import DrivingSample

VRU_RANGE = 25.0  # m
PATH_MARGIN = 2.5  # m, lateral distance from the future path (a lane is ~3.5 m)
MOVING = 1.0  # m/s
LEAD_LANE = 1.75  # m, |y| of an object "in the ego lane" (half a lane)
LEAD_HEADWAY = 2.0  # s
LEAD_MIN_GAP = 8.0  # m
TURN_HEADING = np.deg2rad(30.0)
BRAKE_ACCEL = -1.5  # m/s^2

TRIGGERS = (
    "vulnerable_road_user",
    "object_near_path",
    "close_lead_vehicle",
    "turn",
    "lane_change",
    "braking",
    "instruction",
)


def _distance_to_path(points: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 2) to the polyline `path` (T, 2) that starts at the ego."""
    path = np.concatenate([np.zeros((1, 2)), path], 0)
    a, b = path[:-1], path[1:]
    ab = b - a
    denom = np.maximum((ab * ab).sum(-1), 1e-9)
    t = np.clip(((points[:, None] - a[None]) * ab[None]).sum(-1) / denom[None], 0.0, 1.0)
    nearest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None] - nearest, axis=-1).min(1)


def complexity_reasons(sample: DrivingSample) -> list[str]:
    """The triggers (in TRIGGERS order) that make this sample complex; [] = straightforward."""
    found: set[str] = set()
    if sample.instruction in ("turn left", "turn right"):
        found.add("instruction")
    if sample.ego.ax <= BRAKE_ACCEL:
        found.add("braking")
    future = sample.future_array() if sample.future is not None else None
    if future is not None:
        action = sample.meta_action or meta_action(future, sample.ego.speed)
        lateral, _, longitudinal = action.partition(" with ")
        if lateral.startswith("turn"):
            found.add("turn")
        elif lateral.startswith("change lane"):
            found.add("lane_change")
        if abs(float(np.unwrap(np.r_[0.0, future[:, 2]])[-1])) > TURN_HEADING:
            found.add("turn")
        if "deceleration" in longitudinal:
            found.add("braking")
    objects = sample.scene.objects if sample.scene is not None else []
    if objects:
        xy = np.array([o.box[:2] for o in objects], dtype=np.float64)
        kinds = [o.kind for o in objects]
        dist = np.hypot(xy[:, 0], xy[:, 1])
        ahead = xy[:, 0] > 0.0
        for k, d, a in zip(kinds, dist, ahead, strict=True):
            if k in ("pedestrian", "bicycle") and d <= VRU_RANGE and a:
                found.add("vulnerable_road_user")
        gap = LEAD_MIN_GAP + LEAD_HEADWAY * sample.ego.speed
        for k, (x, y) in zip(kinds, xy, strict=True):
            if k == "vehicle" and 0.0 < x <= gap and abs(y) < LEAD_LANE:
                found.add("close_lead_vehicle")
        if future is not None:
            vel = np.array([o.velocity for o in objects], dtype=np.float64)
            still_or_crossing = (np.hypot(vel[:, 0], vel[:, 1]) < MOVING) | (
                np.abs(vel[:, 1]) > MOVING
            )
            near = _distance_to_path(xy, future[:, :2]) <= PATH_MARGIN
            if np.any(near & ahead & still_or_crossing):
                found.add("object_near_path")
    return [t for t in TRIGGERS if t in found]


def label_complexity(sample: DrivingSample) -> DrivingSample:
    """The sample with `complex` and `meta["complexity_reasons"]` set by the rule.

    A sample that already carries a label (the embedded world's scenario types) keeps it.
    """
    if sample.complex is not None:
        return sample
    reasons = complexity_reasons(sample)
    meta = {**sample.meta, "complexity_reasons": reasons}
    return sample.model_copy(update={"complex": bool(reasons), "meta": meta})
