"""Small hand-made metric caches for the scorer tests (a straight two-lane road)."""

from __future__ import annotations

import numpy as np
import shapely

from autovla.scoring.cache import LANE, ROADBLOCK, MetricCache

T_OBS = 51


def track(x, y, h=0.0, length=4.5, width=2.0, vx=0.0, vy=0.0, steps=None):
    """One track's boxes (51, 5) and velocities (51, 2): moving at (vx, vy) from (x, y)."""
    t = np.arange(T_OBS) * 0.1
    boxes = np.stack(
        [x + vx * t, y + vy * t, np.full(T_OBS, h), np.full(T_OBS, length), np.full(T_OBS, width)],
        -1,
    )
    vel = np.tile([vx, vy], (T_OBS, 1)).astype(float)
    if steps is not None:  # present only at these steps
        absent = np.ones(T_OBS, bool)
        absent[steps] = False
        boxes[absent] = np.nan
        vel[absent] = np.nan
    return boxes, vel


def road_cache(
    speed: float = 10.0,
    tracks: list[tuple[np.ndarray, np.ndarray, int]] = (),
    pdm_progress: float = 0.0,
) -> MetricCache:
    """Ego at the origin heading +x in lane 'ego' (|y| < 1.75) of a road from x = -50 to
    250; lane 'left' (1.75 < y < 5.25) runs the same way; the roadblock spans
    -2.75 < y < 5.25 (a 1 m shoulder on the right). tracks: (boxes, velocity, type)."""
    xs = np.arange(-50.0, 250.0, 1.0)
    a = len(tracks)
    boxes = np.stack([b for b, _, _ in tracks], 1) if a else np.zeros((T_OBS, 0, 5))
    vel = np.stack([v for _, v, _ in tracks], 1) if a else np.zeros((T_OBS, 0, 2))
    return MetricCache(
        token="road",
        ego=[0.0, 0.0, 0.0, speed, 0.0, 0.0, 0.0],
        centerline=np.stack([xs, np.zeros_like(xs), np.zeros_like(xs)], -1),
        route_lane_ids=["ego", "left"],
        map_ids=["ego", "left", "road"],
        map_types=[LANE, LANE, ROADBLOCK],
        map_polygons=[
            shapely.box(-50, -1.75, 250, 1.75),
            shapely.box(-50, 1.75, 250, 5.25),
            shapely.box(-50, -2.75, 250, 5.25),
        ],
        track_ids=[f"t{i}" for i in range(a)],
        track_types=[k for _, _, k in tracks],
        boxes=boxes,
        velocity=vel,
        pdm_closed=np.zeros((51, 3)),
        pdm_progress=pdm_progress,
        speed_limit=15.0,
    )


def straight_plan(speed: float, y: float = 0.0, poses: int = 10) -> np.ndarray:
    """Constant speed along x (ego frame), optionally at a lateral offset y."""
    t = np.arange(1, poses + 1) * 0.5
    return np.stack([speed * t, np.full(poses, y), np.zeros(poses)], -1)
