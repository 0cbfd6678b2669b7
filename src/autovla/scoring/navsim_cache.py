"""Metric caches from OpenScene logs and nuPlan maps, as NAVSIM v1.1's metric caching builds
them (docs/navsim.md, "Metric cache"), in the ego frame of the scene's current frame.

A scene is 14 frames of a log; its current frame (index 3) is iteration 0. From the map and
the frames this module builds, in order: the initial ego state (frame 3's `ego2global` pose,
`ego_dynamic_state`), the corrected route, the drivable map within +-100 m, the starting lane
and the centerline (`autovla.scoring.route`), the red lights of frame 3 on route lane
connectors, the scoring observation (the log's boxes of iterations 0..10 interpolated per
track to 51 steps at 0.1 s) and the planner's observation (frame 3's boxes), then PDM-Closed's
reference trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from autovla.geometry import box_corners, to_global, to_local, wrap_angle, yaw_from_quaternion
from autovla.scoring import route as R
from autovla.scoring.cache import OBS_STEPS, TRACK_TYPES, MetricCache
from autovla.scoring.nuplan_map import LANE_CONNECTOR, NuPlanMap

HISTORY, FUTURE = 4, 10
CURRENT = HISTORY - 1  # index of the current frame in a scene
ITERATIONS = 11  # iterations 0..10 = 0..5 s at 0.5 s
STEPS_PER_FRAME = 5  # 0.5 s / 0.1 s
N_AGENT_TYPES = 3  # vehicle, pedestrian, bicycle move; the rest are static (velocity 0)
# nuPlan's Chrysler Pacifica (the ego of every log): rear axle to centre, length, width, rear
# overhang (rear axle to the rear bumper)
REAR_TO_CENTRE, EGO_LENGTH, EGO_WIDTH, EGO_REAR = 1.461, 5.176, 2.297, 1.127
OFF_ROUTE = 10.0  # m: an ego farther than this from every route lane starts off the route


class SceneError(ValueError):
    """A scene that cannot be cached; `field` names the log field at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass
class Observation:
    """Tracks over time in the ego frame: boxes (T, A, 5) = x, y, heading, length, width and
    velocity (T, A, 2), NaN where a track is absent."""

    ids: list[str]
    types: np.ndarray  # (A,) int8 into TRACK_TYPES
    boxes: np.ndarray
    velocity: np.ndarray


@dataclass
class SceneInputs:
    """Everything of a scene's metric cache except PDM-Closed's result, in the ego frame."""

    token: str
    ego: np.ndarray  # (7,)
    centerline: np.ndarray  # (K, 3)
    route_lane_ids: list[str]
    map_ids: list[str]
    map_types: np.ndarray
    map_polygons: np.ndarray
    observation: Observation  # 51 steps at 0.1 s (scoring)
    detections: Observation  # 1 step: the current frame's boxes (PDM-Closed's observation)
    speed_limit: float | None
    red_light_ids: list[str]
    red_light_polygons: np.ndarray  # (R,) shapely polygons of the red lane connectors


def ego_pose(frame: dict) -> np.ndarray:
    """Global rear-axle pose (x, y, heading) of a frame (as the converter computes it)."""
    try:
        t = np.asarray(frame["ego2global_translation"], dtype=np.float64).reshape(-1)
        q = np.asarray(frame["ego2global_rotation"], dtype=np.float64).reshape(-1)
        pose = np.array([t[0], t[1], float(yaw_from_quaternion(q))])
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise SceneError(
            "ego2global_translation", f"bad ego pose in frame {frame.get('token')!r}: {e}"
        ) from None
    if not np.isfinite(pose).all():
        raise SceneError(
            "ego2global_translation", f"non-finite ego pose in frame {frame.get('token')!r}"
        )
    return pose


def scene_window(frames: list[dict], token: str) -> list[dict]:
    """The 14 frames of the scene whose current frame has `token`."""
    idx = next((i for i, f in enumerate(frames) if str(f.get("token")) == token), None)
    if idx is None:
        raise SceneError("token", "no frame of the log has this token")
    if idx < CURRENT or idx + FUTURE >= len(frames):
        raise SceneError(
            "token",
            f"frame {idx} of {len(frames)}: a scene needs {CURRENT} "
            f"frames before and {FUTURE} after it",
        )
    return frames[idx - CURRENT : idx + FUTURE + 1]


def _annotations(frame: dict) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    anns = frame.get("anns")
    tok = frame.get("token")
    if not isinstance(anns, dict):
        raise SceneError(
            "anns",
            f"frame {tok!r} has no annotations (test logs have none; a "
            "metric cache needs them on the current and 10 future frames)",
        )
    try:
        boxes = np.asarray(anns["gt_boxes"], dtype=np.float64).reshape(-1, 7)
        names = [str(n) for n in anns["gt_names"]]
        vel = np.asarray(anns["gt_velocity_3d"], dtype=np.float64).reshape(-1, 3)
        tracks = [str(t) for t in anns["track_tokens"]]
    except (KeyError, ValueError, TypeError) as e:
        msg = f"frame {tok!r}: bad annotations ({type(e).__name__}: {e})"
        raise SceneError("anns", msg) from None
    if not len(boxes) == len(names) == len(vel) == len(tracks):
        raise SceneError(
            "anns",
            f"frame {tok!r}: {len(boxes)} boxes, {len(names)} names, "
            f"{len(vel)} velocities, {len(tracks)} track tokens",
        )
    if len(set(tracks)) != len(tracks):
        raise SceneError("anns.track_tokens", f"frame {tok!r}: duplicate track tokens")
    unknown = sorted(set(names) - set(TRACK_TYPES))
    if unknown:
        raise SceneError(
            "anns.gt_names",
            f"frame {tok!r}: unknown classes {unknown}; valid: {', '.join(TRACK_TYPES)}",
        )
    if not (np.isfinite(boxes).all() and np.isfinite(vel[:, :2]).all()):
        raise SceneError("anns.gt_boxes", f"frame {tok!r}: non-finite boxes or velocities")
    return boxes, names, vel, tracks


def _frame_objects(frame: dict, rel: np.ndarray):
    """A frame's boxes moved from its ego frame to the scene's (`rel` = that frame's pose in
    the scene's ego frame): (N, 5) boxes, (N, 2) velocities, types, track tokens."""
    boxes, names, vel, tracks = _annotations(frame)
    types = np.array([TRACK_TYPES.index(n) for n in names], dtype=np.int8)
    pose = to_global(boxes[:, [0, 1, 6]], rel)
    c, s = np.cos(rel[2]), np.sin(rel[2])
    v = np.stack([c * vel[:, 0] - s * vel[:, 1], s * vel[:, 0] + c * vel[:, 1]], -1)
    v[types >= N_AGENT_TYPES] = 0.0  # static objects carry no velocity
    out = np.concatenate([pose, boxes[:, 3:5]], 1)
    return out, v, types, tracks


def scoring_observation(window: list[dict], poses: np.ndarray) -> Observation:
    """The log's tracks of iterations 0..10 interpolated per track to 51 steps at 0.1 s.

    Between a track's first and last sightings, x, y, heading (unwrapped) and velocity are
    linear in time; outside them the track is absent (NaN). A track seen once is present at
    all 51 steps. A track keeps the size and class of its first sighting."""
    origin = poses[CURRENT]
    seen: dict[str, list] = {}  # token -> [type, size, [(step, x, y, h, vx, vy)]]
    for k in range(ITERATIONS):
        frame = window[CURRENT + k]
        rel = to_local(poses[CURRENT + k], origin)
        boxes, vel, types, tracks = _frame_objects(frame, rel)
        for b, v, ty, tok in zip(boxes, vel, types, tracks, strict=True):
            entry = seen.setdefault(tok, [int(ty), b[3:5].copy(), []])
            entry[2].append((k * STEPS_PER_FRAME, b[0], b[1], b[2], v[0], v[1]))
    ids = list(seen)
    n = len(ids)
    out_boxes = np.full((OBS_STEPS, n, 5), np.nan)
    out_vel = np.full((OBS_STEPS, n, 2), np.nan)
    steps = np.arange(OBS_STEPS, dtype=np.float64)
    for a, tok in enumerate(ids):
        _, size, states = seen[tok]
        st = np.array(states, dtype=np.float64)
        if len(st) == 1:
            out_boxes[:, a] = [*st[0, 1:4], *size]
            out_vel[:, a] = st[0, 4:6]
            continue
        st[:, 3] = np.unwrap(st[:, 3])
        live = (steps >= st[0, 0]) & (steps <= st[-1, 0])
        vals = [np.interp(steps[live], st[:, 0], st[:, j]) for j in range(1, 6)]
        out_boxes[live, a, 0] = vals[0]
        out_boxes[live, a, 1] = vals[1]
        out_boxes[live, a, 2] = wrap_angle(vals[2])
        out_boxes[live, a, 3:5] = size
        out_vel[live, a, 0] = vals[3]
        out_vel[live, a, 1] = vals[4]
    types = np.array([seen[t][0] for t in ids], dtype=np.int8)
    return Observation(ids, types, out_boxes, out_vel)


def current_detections(window: list[dict]) -> Observation:
    """The current frame's boxes (PDM-Closed plans against these), in its ego frame."""
    boxes, vel, types, tracks = _frame_objects(window[CURRENT], np.zeros(3))
    return Observation(tracks, types, boxes[None], vel[None])


def _to_ego(geoms: np.ndarray, origin: np.ndarray) -> np.ndarray:
    if not len(geoms):
        return np.empty(0, dtype=object)
    return shapely.transform(np.asarray(geoms, dtype=object), lambda xy: to_local(xy, origin))


def red_lights(frame: dict, route_edges: list) -> list:
    """Route lane connectors whose traffic light is red in `frame`."""
    connectors = {e.id: e for e in route_edges if e.kind == LANE_CONNECTOR}
    out = []
    try:
        for item in frame.get("traffic_lights") or []:
            cid, is_red = item[0], item[1]
            if bool(is_red) and str(cid) in connectors:
                out.append(connectors[str(cid)])
    except (TypeError, IndexError, KeyError) as e:
        msg = f"expected (lane_connector_id, is_red) pairs: {e}"
        raise SceneError("traffic_lights", msg) from None
    return list(dict.fromkeys(out))


def scene_inputs(window: list[dict], m: NuPlanMap) -> SceneInputs:
    """Build everything but PDM-Closed for the scene `window` (14 frames) on map `m`."""
    cur = window[CURRENT]
    token = str(cur.get("token"))
    ids = cur.get("roadblock_ids")
    if ids is None or len(ids) == 0:
        raise SceneError("roadblock_ids", "missing or empty: the route comes from it")
    poses = np.stack([ego_pose(f) for f in window])
    origin = poses[CURRENT]
    try:
        dyn = np.asarray(cur["ego_dynamic_state"], dtype=np.float64).reshape(-1)[:4]
        if dyn.size != 4 or not np.isfinite(dyn).all():
            raise ValueError(f"expected 4 finite values, got {dyn}")
    except (KeyError, ValueError, TypeError) as e:
        raise SceneError("ego_dynamic_state", str(e)) from None
    centre = to_global(np.array([REAR_TO_CENTRE, 0.0]), origin)
    footprint = shapely.Polygon(box_corners(origin, EGO_LENGTH, EGO_WIDTH, EGO_REAR))

    blocks = R.correct_route(m, R.route_blocks(m, ids), origin)
    edges = R.route_edges(blocks)
    dmap = R.drivable_map(m, centre)
    lane = R.starting_lane(edges, dmap, origin, centre, footprint)
    off = float(np.min(shapely.distance(np.array([e.polygon for e in edges]), footprint)))
    if off > OFF_ROUTE:
        raise SceneError(
            "roadblock_ids",
            f"the ego starts off the route: the nearest lane of "
            f"the (corrected) route is {off:.1f} m away (limit {OFF_ROUTE:g} m)",
        )
    line = R.centerline(R.lane_path(lane, blocks, edges))
    reds = red_lights(cur, edges)

    local_line = to_local(line, origin)
    return SceneInputs(
        token=token,
        ego=np.array([0.0, 0.0, 0.0, *dyn]),
        centerline=local_line,
        route_lane_ids=[e.id for e in edges],
        map_ids=dmap.ids,
        map_types=dmap.types,
        map_polygons=_to_ego(dmap.polygons, origin),
        observation=scoring_observation(window, poses),
        detections=current_detections(window),
        speed_limit=lane.speed_limit,
        red_light_ids=[e.id for e in reds],
        red_light_polygons=_to_ego(np.array([e.polygon for e in reds], dtype=object), origin),
    )


def build_cache(inputs: SceneInputs) -> MetricCache:
    """The scene's metric cache: its inputs plus PDM-Closed's reference and progress."""
    from autovla.scoring.cache import PDM_STEPS
    from autovla.scoring.pdm_closed import Detections, attach_pdm_closed

    obs, det = inputs.observation, inputs.detections
    cache = MetricCache(
        token=inputs.token,
        ego=inputs.ego,
        centerline=inputs.centerline,
        route_lane_ids=inputs.route_lane_ids,
        map_ids=inputs.map_ids,
        map_types=inputs.map_types,
        map_polygons=inputs.map_polygons,
        track_ids=obs.ids,
        track_types=obs.types,
        boxes=obs.boxes,
        velocity=obs.velocity,
        pdm_closed=np.zeros((PDM_STEPS, 3)),  # placeholder until PDM-Closed has run
        pdm_progress=0.0,
        speed_limit=inputs.speed_limit,
        red_light_ids=inputs.red_light_ids,
    )
    planner = Detections(det.ids, det.types, det.boxes[0], det.velocity[0])
    return attach_pdm_closed(cache, planner, list(inputs.red_light_polygons))


def cache_relpath(log_name: str, token: str) -> str:
    """Where a scene's cache lives, relative to the dataset root."""
    from autovla.paths import safe_name

    return f"metric_cache/{safe_name(log_name)}/{safe_name(token)}.npz"


def write_cache(root: Path, log_name: str, cache: MetricCache) -> str:
    rel = cache_relpath(log_name, cache.token)
    cache.save(Path(root) / rel)
    return rel
