"""Metric caches from the embedded world (autovla.sim), so it is scored like NAVSIM data.

The world's roads become NAVSIM's drivable-map layers: every lane a LANE polygon, each
direction of a road a ROADBLOCK (its lanes plus the shoulder), and at a junction the
approach lanes end at the stop line, LANE_CONNECTORs carry each allowed turn through the
junction and the junction square is an INTERSECTION. The route is the expert's: on a road
its direction's lanes, at a junction the approach lanes, the connectors of its turn and
the exit lanes; the centerline is the expert's route path. Agents' logged boxes at 0.1 s
are the scoring observation; a red light makes the on-route connectors of its approach
red-light polygons for PDM-Closed. Polygons are kept within a window around the ego
(`WINDOW_BEHIND` .. `WINDOW_AHEAD` metres along each path) so caches stay small.
"""

from __future__ import annotations

import numpy as np
import shapely

from autovla.geometry import to_local, wrap_angle
from autovla.scoring.cache import (
    INTERSECTION,
    LANE,
    LANE_CONNECTOR,
    ROADBLOCK,
    TRACK_TYPES,
    MetricCache,
)
from autovla.scoring.pdm_closed import attach_pdm_closed
from autovla.sim.map import SHOULDER, Path, RoadMap, intersection_half, intersection_route

WINDOW_BEHIND = 100.0  # m of road kept behind the ego
WINDOW_AHEAD = 220.0  # m kept ahead
VERTEX_STEP = 2  # keep every 2nd path sample (1 m) in polygon outlines
STOP_LINE_BACK = 4.5  # m from the junction edge to the stop line (sim.map)
OBS_STEPS = 51
TURNS = ("straight", "left", "right")


def _strip(path: Path, d0: float, d1: float, s0: float, s1: float) -> shapely.Polygon | None:
    """Polygon between offsets d0 < d1 (left positive) of a path, s in [s0, s1]."""
    s0, s1 = max(s0, 0.0), min(s1, path.length)
    if s1 - s0 < 1.0:
        return None
    s = np.arange(s0, s1, 0.5 * VERTEX_STEP)
    s = np.append(s, s1)
    right = path.pose(s, d0)[:, :2]
    left = path.pose(s, d1)[:, :2]
    return shapely.Polygon(np.concatenate([right, left[::-1]]))


def _window(path: Path, ego_xy: np.ndarray) -> tuple[float, float]:
    s, _ = path.project(ego_xy)
    return float(s) - WINDOW_BEHIND, float(s) + WINDOW_AHEAD


class _MapBuilder:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.types: list[int] = []
        self.polys: list[shapely.Geometry] = []

    def add(self, oid: str, kind: int, poly: shapely.Geometry | None) -> None:
        if poly is not None and not poly.is_empty:
            self.ids.append(oid)
            self.types.append(kind)
            self.polys.append(poly)


def road_layers(m: RoadMap, ego_xy: np.ndarray) -> tuple[_MapBuilder, list[str]]:
    """Lanes and the two roadblocks of a straight or curved road; route = forward lanes."""
    out = _MapBuilder()
    w = m.lane_width
    route = []
    for direction in ("fwd", "back"):
        lanes = [ln for ln in m.lanes if ln.road == direction]
        for ln in lanes:
            s0, s1 = _window(ln.path, ego_xy)
            oid = f"{direction}_lane{ln.index}"
            out.add(oid, LANE, _strip(ln.path, -w / 2, w / 2, s0, s1))
            if direction == "fwd":
                route.append(oid)
        if lanes:
            right = next(ln for ln in lanes if ln.index == 0)  # rightmost lane of the direction
            s0, s1 = _window(right.path, ego_xy)
            width = (len(lanes) - 0.5) * w  # from the rightmost lane's centre to the middle
            out.add(
                f"{direction}_roadblock", ROADBLOCK,
                _strip(right.path, -w / 2 - SHOULDER, width, s0, s1),
            )  # fmt: skip
    return out, route


def _rot(pts: np.ndarray, arm: int) -> np.ndarray:
    ang = arm * np.pi / 2
    c, s = np.cos(ang), np.sin(ang)
    return pts @ np.array([[c, s], [-s, c]])


def route_turn(route: Path) -> str:
    """The turn (straight, left, right) of an intersection route."""
    turn = wrap_angle(route.heading[-1] - route.heading[0])
    name = "straight" if abs(turn) < np.pi / 4 else ("left" if turn > 0 else "right")
    return name


def _exit_arm(arm: int, turn: str) -> int:
    return (arm + {"straight": 2, "left": 3, "right": 1}[turn]) % 4


def junction_layers(
    m: RoadMap, route: Path, red_arms: set[int]
) -> tuple[_MapBuilder, list[str], list[shapely.Geometry]]:
    """Arms (lanes, roadblocks), connectors and the junction of a 4-way intersection."""
    out = _MapBuilder()
    n, w = m.lanes_per_direction, m.lane_width
    h = intersection_half(n, w)
    half_w = n * w + SHOULDER
    arm_len = 150.0
    stop_x = -h - STOP_LINE_BACK
    for arm in range(4):
        for k in range(n):
            y_in = -(n - k - 0.5) * w
            box = shapely.box(-h - arm_len, y_in - w / 2, stop_x, y_in + w / 2)
            out.add(f"arm{arm}_in{k}", LANE, shapely.Polygon(_rot(_coords(box), arm)))
            y_out = (n - k - 0.5) * w
            box = shapely.box(-h - arm_len, y_out - w / 2, -h, y_out + w / 2)
            out.add(f"arm{arm}_out{k}", LANE, shapely.Polygon(_rot(_coords(box), arm)))
        for side, (y0, y1) in (("in", (-half_w, 0.0)), ("out", (0.0, half_w))):
            box = shapely.box(-h - arm_len, y0, -h + 1.0, y1)
            out.add(f"arm{arm}_rb_{side}", ROADBLOCK, shapely.Polygon(_rot(_coords(box), arm)))
    connectors: dict[tuple[int, int, str], str] = {}
    for arm in range(4):
        for k in range(n):
            turns = ("straight",) + (("left",) if k == n - 1 else ()) + (("right",) if k == 0
                                                                        else ())  # fmt: skip
            for turn in turns:
                path = intersection_route(n, w, arm, k, turn, arm_len)
                s_stop = arm_len - STOP_LINE_BACK
                s_exit = path.length - arm_len
                oid = f"arm{arm}_in{k}_{turn}"
                out.add(oid, LANE_CONNECTOR, _strip(path, -w / 2, w / 2, s_stop, s_exit))
                connectors[(arm, k, turn)] = oid
    out.add("junction", INTERSECTION, shapely.Polygon(m.intersection))
    turn = route_turn(route)
    exit_arm = _exit_arm(0, turn)
    on_route = [f"arm0_in{k}" for k in range(n)]
    route_connectors = [oid for (arm, _, t), oid in connectors.items() if arm == 0 and t == turn]
    on_route += route_connectors
    on_route += [f"arm{exit_arm}_out{k}" for k in range(n)]
    reds = [out.polys[out.ids.index(c)] for c in route_connectors if 0 in red_arms]
    return out, on_route, reds


def _coords(poly: shapely.Polygon) -> np.ndarray:
    return shapely.get_coordinates(poly.exterior)[:-1]


def build_metric_cache(scn, log, k: int, token: str, with_pdm_closed: bool = True) -> MetricCache:
    """The metric cache of the sample at 10 Hz index k of a rollout log (sim.rollout.Log)."""
    m: RoadMap = scn.world.map
    pose = log.ego[k, :3]
    route: Path = scn.expert.route
    red_arms = {i for i, code in enumerate(log.lights[k]) if code == 2}
    if m.kind == "intersection":
        layers, on_route, reds = junction_layers(m, route, red_arms)
    else:
        layers, on_route = road_layers(m, pose[:2])
        reds = []
    polys = [_to_local_poly(p, pose) for p in layers.polys]
    reds = [_to_local_poly(p, pose) for p in reds]
    s0, s1 = _window(route, pose[:2])
    s = np.arange(max(s0, 0.0), min(s1, route.length), 1.0)
    centerline = to_local(route.pose(s), pose)
    # scoring observation: every agent's logged box at 0.1 s from now
    agents = scn.world.agents
    a = len(agents)
    if len(log.t) < k + OBS_STEPS + 1:
        raise ValueError(f"log has {len(log.t)} steps; a cache at index {k} needs {k + 52}")
    poses = to_local(log.agents[k : k + OBS_STEPS].reshape(OBS_STEPS, a, 3), pose)
    sizes = np.array([[ag.length, ag.width] for ag in agents]).reshape(a, 2)
    boxes = np.concatenate([poses, np.broadcast_to(sizes, (OBS_STEPS, a, 2))], -1)
    speed = log.v[k : k + OBS_STEPS].reshape(OBS_STEPS, a)
    velocity = np.stack([np.cos(poses[..., 2]), np.sin(poses[..., 2])], -1) * speed[..., None]
    ego = log.ego
    v, acc = float(ego[k, 3]), float(ego[k, 4])
    yaw_rate = float(wrap_angle(ego[k + 1, 2] - ego[k - 1, 2])) / 0.2 if k > 0 else 0.0
    cache = MetricCache(
        token=token,
        ego=[0.0, 0.0, 0.0, v, 0.0, acc, v * yaw_rate],
        centerline=centerline,
        route_lane_ids=on_route,
        map_ids=layers.ids,
        map_types=layers.types,
        map_polygons=polys,
        track_ids=[ag.id for ag in agents],
        track_types=[TRACK_TYPES.index(ag.kind) for ag in agents],
        boxes=boxes,
        velocity=velocity,
        pdm_closed=np.zeros((51, 3)),
        pdm_progress=0.0,
        speed_limit=m.speed_limit,
        red_light_ids=[f"red_light_{i}" for i in range(len(reds))],
    )
    if with_pdm_closed:
        attach_pdm_closed(cache, None, reds)
    return cache


def _to_local_poly(poly: shapely.Polygon, pose: np.ndarray) -> shapely.Polygon:
    return shapely.transform(poly, lambda xy: to_local(xy, pose))
