"""The scenario library: each type builds a randomised world, ego and expert from a seed.

`SCENARIO_TYPES` maps a type name to its complex flag (True: the scene needs reasoning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from autovla.sim.agents import EGO_FRONT, IDM, Agent
from autovla.sim.expert import Expert, find_conflicts
from autovla.sim.map import (
    SHOULDER,
    Path,
    RoadMap,
    add_crosswalk,
    build_intersection,
    build_road,
    intersection_half,
    intersection_route,
)
from autovla.sim.world import World

SCENARIO_TYPES: dict[str, bool] = {
    "free_cruise": False,
    "car_following": False,
    "lead_vehicle_hard_braking": True,
    "stopped_queue": True,
    "red_light": True,
    "green_light_turn": False,
    "pedestrian_crossing": True,
    "construction_lane_closure": True,
    "cut_in": True,
    "unprotected_left_turn": True,
    "broken_down_vehicle": True,
}
LIGHTINGS = ("day", "dusk")
SPEED_LIMITS = (11.1, 13.9, 16.7)  # 40, 50, 60 km/h
CAR_COLOURS = [
    (200, 30, 30),
    (30, 60, 170),
    (230, 230, 230),
    (40, 40, 40),
    (120, 120, 130),
    (20, 120, 60),
    (220, 180, 30),
    (150, 80, 20),
]


@dataclass
class Scenario:
    name: str
    seed: int
    world: World
    expert: Expert
    instruction: str
    complex: bool
    lighting: str


def check_type(name: str) -> None:
    if name not in SCENARIO_TYPES:
        raise ValueError(f"unknown scenario type {name!r}; valid: {', '.join(SCENARIO_TYPES)}")


def _car(rng, aid: str, path: Path, s: float, v: float, v_des: float | None = None, **kw) -> Agent:
    length, width = float(rng.uniform(4.2, 5.0)), float(rng.uniform(1.8, 2.0))
    colour = CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))]
    idm = IDM(v_des=v if v_des is None else v_des, headway=float(rng.uniform(1.2, 1.8)), s0=2.5)
    return Agent(aid, "vehicle", path, s, length, width, 1.5, colour, v=v, idm=idm, **kw)


def _cone(aid: str, path: Path, s: float, d: float, kind: str = "traffic_cone") -> Agent:
    if kind == "barrier":
        return Agent(
            aid, kind, path, s, 0.6, 2.0, 1.0, (240, 240, 240), d=d, d_target=d, static=True
        )
    return Agent(aid, kind, path, s, 0.4, 0.4, 0.7, (250, 110, 0), d=d, d_target=d, static=True)


@dataclass
class _Road:
    m: RoadMap
    ego_lane: int
    speed: float
    v0: float

    def lane(self, k: int) -> Path:
        return [ln for ln in self.m.lanes if ln.road == "fwd"][k].path

    def back(self, k: int) -> Path:
        return [ln for ln in self.m.lanes if ln.road == "back"][k].path


EGO_S = 80.0  # ego rear axle starts here on road lanes (world x ~ 0)


def _road(rng, min_lanes: int = 1, lanes: int | None = None, straight: bool = False) -> _Road:
    n = lanes if lanes is not None else int(rng.integers(min_lanes, 5))
    n = max(n, min_lanes)
    back = int(rng.integers(1, 3))
    width = float(rng.uniform(3.3, 3.8))
    kappa = (
        0.0
        if straight or rng.random() < 0.5
        else float(rng.choice([-1, 1]) / rng.uniform(180, 500))
    )
    m = build_road(n, back, width, kappa)
    m.speed_limit = float(rng.choice(SPEED_LIMITS))
    ego_lane = int(rng.integers(n))
    return _Road(m, ego_lane, m.speed_limit, m.speed_limit * float(rng.uniform(0.75, 1.0)))


def _background(rng, r: _Road, agents: list[Agent], skip_lanes: set[int], n: int = 3) -> None:
    """Vehicles in other forward lanes and oncoming lanes, well separated from the ego."""
    lanes = [k for k in range(r.m.lanes_per_direction) if k not in skip_lanes]
    for i in range(n):
        if lanes and rng.random() < 0.6:
            k = int(rng.choice(lanes))
            s = EGO_S + float(rng.choice([-1, 1])) * float(rng.uniform(30, 90))
            v = r.speed * float(rng.uniform(0.8, 1.0))
            agents.append(_car(rng, f"bg{i}", r.lane(k), s, v))
        else:
            nb = sum(1 for ln in r.m.lanes if ln.road == "back")
            path = r.back(int(rng.integers(nb)))
            s = path.length - EGO_S - float(rng.uniform(20, 150))
            agents.append(_car(rng, f"on{i}", path, s, r.speed * float(rng.uniform(0.8, 1.0))))
    _dedupe(agents)


def _dedupe(agents: list[Agent], min_gap: float = 12.0) -> None:
    """Drop vehicles spawned on top of an earlier one (same path, too close)."""
    keep: list[Agent] = []
    for a in agents:
        if all(b.path is not a.path or abs(b.s - a.s) > min_gap for b in keep):
            keep.append(a)
    agents[:] = keep


def _road_expert(r: _Road, v0: float) -> Expert:
    w = r.m.lane_width
    offsets = [(k - r.ego_lane) * w for k in range(r.m.lanes_per_direction)]
    return Expert(r.lane(r.ego_lane), r.m.speed_limit, w, offsets, s=EGO_S, v=v0)


# --- road scenarios -----------------------------------------------------------------------
def _free_cruise(rng, lanes):
    r = _road(rng, 1, lanes)
    agents: list[Agent] = []
    _background(rng, r, agents, {r.ego_lane}, n=int(rng.integers(1, 5)))
    return r.m, agents, _road_expert(r, r.v0), "go straight"


def _lead(rng, lanes, kind: str):
    r = _road(rng, 1, lanes)
    v0 = r.v0
    agents: list[Agent] = []
    lane = r.lane(r.ego_lane)
    if kind == "queue":
        s = EGO_S + EGO_FRONT + float(rng.uniform(45, 75))
        for i in range(int(rng.integers(2, 5))):
            car = _car(rng, f"q{i}", lane, s, 0.0, brake_at=0.0)
            agents.append(car)
            s += car.length + float(rng.uniform(2.0, 4.0))
    else:
        gap = v0 * 1.6 + float(rng.uniform(6, 15))
        v_lead = v0 * float(rng.uniform(0.85, 1.0))
        lead = _car(rng, "lead", lane, EGO_S + EGO_FRONT + gap + 2.4, v_lead)
        if kind == "braking":
            lead.brake_at = float(rng.uniform(2.0, 4.5))
            lead.brake_decel = float(rng.uniform(4.0, 7.0))
        agents.append(lead)
    _background(rng, r, agents, {r.ego_lane}, n=int(rng.integers(0, 4)))
    return r.m, agents, _road_expert(r, v0), "go straight"


def _cut_in(rng, lanes):
    r = _road(rng, 2, lanes)
    w = r.m.lane_width
    side = (
        1
        if r.ego_lane == 0
        else -1
        if r.ego_lane == r.m.lanes_per_direction - 1
        else int(rng.choice([-1, 1]))
    )
    k = r.ego_lane + side
    v_cut = r.v0 + float(rng.uniform(-1.0, 1.0))
    gap = float(rng.uniform(9, 18)) + 0.4 * r.v0
    cutter = _car(rng, "cutter", r.lane(k), EGO_S + EGO_FRONT + gap + 2.4, v_cut)
    cutter.lane_change_at = float(rng.uniform(1.5, 3.0))
    cutter.lane_change_to = -side * w
    agents = [cutter]
    _background(rng, r, agents, {r.ego_lane, k}, n=int(rng.integers(0, 3)))
    return r.m, agents, _road_expert(r, r.v0), "go straight"


def _blockage(rng, lanes, kind: str):
    r = _road(rng, 2, lanes)
    w = r.m.lane_width
    lane = r.lane(r.ego_lane)
    s0 = EGO_S + float(rng.uniform(85, 110))
    agents: list[Agent] = []
    if kind == "cones":
        side = 1 if r.ego_lane < r.m.lanes_per_direction - 1 else -1  # the open side
        for i in range(6):  # taper across the lane
            agents.append(
                _cone(
                    f"cone{i}", lane, s0 + 3.0 * i, -side * (w / 2 - 0.5) + side * i * (w - 1.0) / 5
                )
            )
        for i in range(1, 8):
            agents.append(_cone(f"cone{5 + i}", lane, s0 + 15.0 + 4.0 * i, side * (w / 2 - 0.5)))
        agents.append(_cone("barrier0", lane, s0 + 22.0, 0.0, "barrier"))
    else:
        car = _car(rng, "broken", lane, s0, 0.0, static=True)
        car.d = car.d_target = float(rng.uniform(-0.3, 0.3))
        agents.append(car)
    _background(rng, r, agents, set(range(r.m.lanes_per_direction)), n=int(rng.integers(0, 3)))
    return r.m, agents, _road_expert(r, r.v0), "go straight"


def _pedestrian(rng, lanes):
    r = _road(rng, 1, lanes if lanes is not None else int(rng.integers(1, 3)), straight=True)
    dist = float(rng.uniform(60, 80))
    x_cw = dist  # ego rear axle at world x = 0
    add_crosswalk(r.m, x_cw)
    n_back = sum(1 for ln in r.m.lanes if ln.road == "back")
    y0 = -r.m.lanes_per_direction * r.m.lane_width - SHOULDER - 1.5
    y1 = n_back * r.m.lane_width + SHOULDER + 1.5
    xc = x_cw + 2.0
    line = np.array([[xc, y0], [xc, y1]]) if rng.random() < 0.5 else np.array([[xc, y1], [xc, y0]])
    walk = Path(line)
    v0 = min(r.v0, 11.0)
    start = max(0.3, (dist - EGO_FRONT - float(rng.uniform(45, 55))) / v0)
    ped = Agent(
        "ped0",
        "pedestrian",
        walk,
        0.0,
        0.5,
        0.6,
        1.75,
        (60, 60, 160),
        start_at=start,
        idm=IDM(v_des=float(rng.uniform(1.1, 1.6))),
        obeys_lights=False,
    )
    agents = [ped]
    _background(rng, r, agents, {r.ego_lane}, n=int(rng.integers(0, 3)))
    return r.m, agents, _road_expert(r, v0), "go straight"


# --- intersection scenarios ---------------------------------------------------------------
def _junction(rng, lanes, ego_green_from: float, green: float):
    n = lanes if lanes is not None else int(rng.integers(1, 3))
    w = float(rng.uniform(3.3, 3.7))
    yellow = 3.0
    cycle = 2 * green + 2 * yellow + 2.0
    m = build_intersection(n, w, green, yellow, offset=(-ego_green_from) % cycle)
    m.speed_limit = float(rng.choice(SPEED_LIMITS[:2]))
    return m, n, w


def _ego_on_route(
    m: RoadMap, n: int, w: float, lane: int, route_lane: int, turn: str, dist: float, v0: float
):
    route = intersection_route(n, w, 0, route_lane, turn)
    h = intersection_half(n, w)
    s_line = route.project(np.array([-h - 4.5, 0.0]))[0]  # along-route position of the stop line
    offsets = [(k - route_lane) * w for k in range(n)]
    e = Expert(route, m.speed_limit, w, offsets, s=float(s_line) - dist - EGO_FRONT, v=v0)
    e.d = e.d_target = (lane - route_lane) * w
    return e


def _red_light(rng, lanes):
    t_green = float(rng.uniform(6.0, 10.0))
    m, n, w = _junction(rng, lanes, t_green, green=float(rng.uniform(10, 14)))
    lane = int(rng.integers(n))
    v0 = m.speed_limit * float(rng.uniform(0.7, 0.95))
    e = _ego_on_route(m, n, w, lane, lane, "straight", float(rng.uniform(50, 80)), v0)
    agents = []
    for i in range(int(rng.integers(1, 3))):
        arm = int(rng.choice([1, 3]))
        path = intersection_route(n, w, arm, int(rng.integers(n)), "straight")
        agents.append(
            _car(
                rng,
                f"cross{i}",
                path,
                150.0 - float(rng.uniform(10, 60)),
                float(rng.uniform(7, 11)),
            )
        )
    _dedupe(agents)
    return m, agents, e, "go straight"


def _green_turn(rng, lanes):
    m, n, w = _junction(rng, lanes, 0.0, green=30.0)
    turn = str(rng.choice(["left", "right"]))
    route_lane = n - 1 if turn == "left" else 0
    lane = int(rng.integers(n))
    v0 = m.speed_limit * float(rng.uniform(0.7, 0.95))
    e = _ego_on_route(m, n, w, lane, route_lane, turn, float(rng.uniform(55, 85)), v0)
    agents = []
    if rng.random() < 0.5 and e.d == 0.0:  # a car ahead doing the same turn
        agents.append(
            _car(rng, "lead", e.route, e.s + EGO_FRONT + float(rng.uniform(25, 40)), v0 * 0.9)
        )
    return m, agents, e, f"turn {turn}"


def _unprotected_left(rng, lanes):
    m, n, w = _junction(rng, lanes, 0.0, green=30.0)
    v0 = m.speed_limit * float(rng.uniform(0.6, 0.85))
    e = _ego_on_route(m, n, w, n - 1, n - 1, "left", float(rng.uniform(30, 50)), v0)
    agents = []
    s = 150.0 - float(rng.uniform(20, 45))
    for i in range(int(rng.integers(1, 4))):
        path = intersection_route(n, w, 2, int(rng.integers(n)), "straight")
        agents.append(_car(rng, f"oncoming{i}", path, s, float(rng.uniform(9, 12))))
        s -= float(rng.uniform(15, 35))
    _dedupe(agents)
    return m, agents, e, "turn left"


BUILDERS: dict[str, Callable] = {
    "free_cruise": _free_cruise,
    "car_following": lambda rng, lanes: _lead(rng, lanes, "follow"),
    "lead_vehicle_hard_braking": lambda rng, lanes: _lead(rng, lanes, "braking"),
    "stopped_queue": lambda rng, lanes: _lead(rng, lanes, "queue"),
    "red_light": _red_light,
    "green_light_turn": _green_turn,
    "pedestrian_crossing": _pedestrian,
    "construction_lane_closure": lambda rng, lanes: _blockage(rng, lanes, "cones"),
    "cut_in": _cut_in,
    "unprotected_left_turn": _unprotected_left,
    "broken_down_vehicle": lambda rng, lanes: _blockage(rng, lanes, "car"),
}


def make_scenario(
    name: str, seed: int, lanes: int | None = None, lighting: str | None = None
) -> Scenario:
    """Build scenario `name` randomised by `seed`; `lanes` (1-4) and `lighting` can be forced."""
    check_type(name)
    if lanes is not None and not 1 <= lanes <= 4:
        raise ValueError(f"lanes must be in 1..4 (lanes per direction), got {lanes}")
    if lighting is not None and lighting not in LIGHTINGS:
        raise ValueError(f"unknown lighting {lighting!r}; valid: {', '.join(LIGHTINGS)}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in 0..2**63-1, got {seed}")
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    m, agents, expert, instruction = BUILDERS[name](rng, lanes)
    light = lighting or str(rng.choice(LIGHTINGS, p=[0.7, 0.3]))
    world = World(m, agents, expert.ego_state())
    expert.conflicts = find_conflicts(expert.route, agents)
    return Scenario(name, seed, world, expert, instruction, SCENARIO_TYPES[name], light)
