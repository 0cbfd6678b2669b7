"""A scene's route, centerline and drivable map on a nuPlan map, as NAVSIM v1.1's PDM-Closed
builds them (docs/navsim.md, "What the metric cache holds"):

* route ids = the current frame's `roadblock_ids`, de-duplicated in order, each a roadblock or
  else a roadblock connector; corrected where the ego starts off the route, where two
  consecutive blocks are not linked, and where the route loops back through an intersection;
* starting lane = the on-route lane under the rear axle with the smallest heading error (else
  a route lane holding the centre, else the nearest one);
* centerline = the baseline paths of the cheapest lane sequence (Dijkstra over route lanes,
  cost = baseline length) to the last roadblock of a 30-block window;
* drivable map = roadblocks, their lanes, the lane connectors of roadblock connectors,
  intersections and carparks intersecting a +-100 m box around the ego centre.

Everything here is in the map's projected frame; the cache builder moves it to the ego frame.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely

from autovla.geometry import wrap_angle
from autovla.scoring.nuplan_map import (
    CARPARK_AREA,
    INTERSECTION,
    LANE,
    LANE_CONNECTOR,
    ROADBLOCK,
    ROADBLOCK_CONNECTOR,
    Block,
    Edge,
    NuPlanMap,
)

CANDIDATE_BOX = 1.0  # m, half-size of the box around the rear axle for the current roadblock
HEADING_TOLERANCE = np.pi / 4
DISPLACEMENT_TOLERANCE = 3.0  # m
BACKWARD_DEPTH, FORWARD_DEPTH = 15, 30
LOOP_AREA = 1.0  # m^2 of overlap between roadblock connectors that marks a loop
CENTERLINE_WINDOW = 30  # roadblocks
MAP_RADIUS = 100.0  # m, half-size of the drivable-map box


class RouteError(ValueError):
    """A route that cannot be built; `field` names the log field at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def dedupe(ids: Sequence) -> list[str]:
    return list(dict.fromkeys(str(i) for i in ids))


def route_blocks(m: NuPlanMap, ids: Sequence) -> list[Block]:
    """The route's blocks; an id that is neither a roadblock nor a connector is an error."""
    out = []
    for i in dedupe(ids):
        block = m.block(i)
        if block is None:
            raise RouteError(
                "roadblock_ids",
                f"route id {i!r} is neither a roadblock nor a roadblock connector of {m.path}",
            )
        out.append(block)
    if not out:
        raise RouteError("roadblock_ids", "empty route (no roadblock ids)")
    return out


def _nearest_vertex(edge: Edge, xy: np.ndarray) -> tuple[float, int]:
    d = np.hypot(edge.baseline[:, 0] - xy[0], edge.baseline[:, 1] - xy[1])
    i = int(np.argmin(d))
    return float(d[i]), i


def current_block(m: NuPlanMap, pose: np.ndarray, route_ids: set[str]) -> tuple[Block, list[Block]]:
    """The block the ego (rear axle `pose`) is most likely on, and all candidates.

    Candidates intersect a +-1 m box around the rear axle (else the nearest roadblock and the
    nearest connector). A candidate qualifies through a lane whose nearest baseline vertex is
    within 3 m and pi/4 of the ego; qualified on-route blocks win, then other qualified
    blocks, then the block with the nearest lane vertex."""
    x, y, h = (float(v) for v in pose[:3])
    rb, rbc = m.blocks_in(
        shapely.box(x - CANDIDATE_BOX, y - CANDIDATE_BOX, x + CANDIDATE_BOX, y + CANDIDATE_BOX)
    )
    candidates = rb + rbc or m.nearest_blocks(shapely.Point(x, y))
    on, on_err, off, off_err, nearest = [], [], [], [], []
    xy = np.array([x, y])
    for block in candidates:
        best = np.inf
        for edge in block.edges:
            d, i = _nearest_vertex(edge, xy)
            best = min(best, d)
            if abs(wrap_angle(edge.baseline[i, 2] - h)) < HEADING_TOLERANCE and (
                d < DISPLACEMENT_TOLERANCE
            ):
                (on if block.id in route_ids else off).append(block)
                (on_err if block.id in route_ids else off_err).append(d)
        nearest.append(best)
    if on:
        return on[int(np.argmin(on_err))], on
    if off:
        return off[int(np.argmin(off_err))], off
    return candidates[int(np.argmin(nearest))], candidates


def bfs_blocks(
    start: Block, targets: set[str], max_depth: int, forward: bool = True
) -> tuple[list[Block], bool]:
    """Breadth-first search over the roadblock graph from `start` to any block id in `targets`
    (start at depth 1, nodes deeper than `max_depth` never tested). The path runs in driving
    order: start -> target forward, target -> start backward (along incoming edges).

    As in NAVSIM's search, nodes may be revisited at other depths, and a node's parent at a
    depth is the last block that reached it at that depth. NAVSIM keeps every copy of a node in
    a level, so parallel links multiply the level at every step (k^depth); here each level is
    kept once in order of first arrival (which decides the target found) and once in order of
    last arrival (which decides the parents): the same answer in at most depth x links steps."""
    first, last = [start], [start]
    parent: dict[tuple[str, int], Block | None] = {(start.id, 1): None}
    depth = 1
    while first and depth <= max_depth:
        for block in first:
            if block.id in targets:
                path, d = [block], depth
                while (p := parent[(path[-1].id, d)]) is not None:
                    path.append(p)
                    d -= 1
                return (path[::-1] if forward else path), True
        nxt_first: dict[int, Block] = {}
        for block in first:
            for n in block.outgoing if forward else block.incoming:
                nxt_first.setdefault(id(n), n)
        nxt_last: dict[int, Block] = {}
        for block in last:
            for n in block.outgoing if forward else block.incoming:
                nxt_last.pop(id(n), None)  # re-inserted at the end: its latest arrival
                nxt_last[id(n)] = n
                parent[(n.id, depth + 1)] = block
        first, last, depth = list(nxt_first.values()), list(nxt_last.values()), depth + 1
    return [], False


def remove_loops(blocks: list[Block]) -> list[Block]:
    """Cut the route at the first roadblock connector overlapping an earlier one (> 1 m^2)."""
    seen: list[shapely.Geometry] = []
    for i, b in enumerate(blocks):
        if b.kind != ROADBLOCK_CONNECTOR:
            continue
        if any(shapely.intersection(p, b.polygon).area > LOOP_AREA for p in seen):
            return blocks[:i]
        seen.append(b.polygon)
    return blocks


def correct_route(m: NuPlanMap, blocks: list[Block], pose: np.ndarray) -> list[Block]:
    """NAVSIM's route correction at the rear-axle `pose` (see the module docstring)."""
    ids = [b.id for b in blocks]
    start, candidates = current_block(m, pose, set(ids))
    blocks = list(blocks)
    if start.id not in ids:  # the ego starts off the route
        path, found = bfs_blocks(blocks[0], {c.id for c in candidates}, BACKWARD_DEPTH, False)
        if found:
            blocks = path[:-1] + blocks
        else:
            path, found = bfs_blocks(start, set(ids[:3]), FORWARD_DEPTH, True)
            if found:
                end = ids.index(path[-1].id)
                blocks = path + blocks[end + 1 :]
    # fill gaps between consecutive blocks that are not linked
    filled: list[Block] = []
    for i, b in enumerate(blocks):
        filled.append(b)
        if i + 1 == len(blocks) or b.id in {x.id for x in blocks[i + 1].incoming}:
            continue
        path, found = bfs_blocks(b, {blocks[i + 1].id}, FORWARD_DEPTH, True)
        if found and len(path) >= 3:
            filled.extend(path[1:-1])
    return list(dict.fromkeys(remove_loops(filled)))  # each block once, in order


def route_edges(blocks: list[Block]) -> list[Edge]:
    """The interior lanes and lane connectors of the route's blocks, in order."""
    seen: dict[tuple[int, str], Edge] = {}
    for b in blocks:
        for e in b.edges:
            seen.setdefault((e.kind, e.id), e)
    return list(seen.values())


@dataclass
class DrivableMap:
    ids: list[str]
    types: np.ndarray  # int8: LANE, LANE_CONNECTOR, ROADBLOCK, INTERSECTION, CARPARK_AREA
    polygons: np.ndarray  # shapely geometries

    def lanes_at(self, point: shapely.Point) -> list[int]:
        """Indices of lane / lane-connector polygons intersecting `point`."""
        lanes = np.flatnonzero((self.types == LANE) | (self.types == LANE_CONNECTOR))
        hit = shapely.intersects(self.polygons[lanes], point)
        return [int(i) for i in lanes[hit]]


def drivable_map(m: NuPlanMap, centre: np.ndarray, radius: float = MAP_RADIUS) -> DrivableMap:
    """PDM's drivable map: roadblocks, lanes, lane connectors, intersections, carparks whose
    polygons intersect the +-radius box around the ego centre (roadblock-connector polygons
    themselves are left out, as NAVSIM does)."""
    x, y = float(centre[0]), float(centre[1])
    box = shapely.box(x - radius, y - radius, x + radius, y + radius)
    rb, rbc = m.blocks_in(box)
    ids: list[str] = []
    types: list[int] = []
    polys: list = []

    def add(i: str, t: int, p) -> None:
        ids.append(i)
        types.append(t)
        polys.append(p)

    for b in rb:
        add(b.id, ROADBLOCK, b.polygon)
    for b in rb + rbc:
        for e in b.edges:
            add(e.id, LANE if b.kind == ROADBLOCK else LANE_CONNECTOR, e.polygon)
    for kind in (INTERSECTION, CARPARK_AREA):
        for i, p in m.areas_in(box, kind):
            add(i, kind, p)
    arr = np.empty(len(polys), dtype=object)
    arr[:] = polys
    return DrivableMap(ids, np.array(types, dtype=np.int8), arr)


def starting_lane(
    edges: list[Edge], dmap: DrivableMap, rear: np.ndarray, centre: np.ndarray, footprint
) -> Edge:
    """The lane PDM-Closed starts from (see the module docstring)."""
    by_key = {(e.kind, e.id): e for e in edges}
    hits, errors = [], []
    for i in dmap.lanes_at(shapely.Point(rear[0], rear[1])):
        e = by_key.get((int(dmap.types[i]), dmap.ids[i]))
        if e is None:
            continue
        _, j = _nearest_vertex(e, rear[:2])
        hits.append(e)
        errors.append(abs(float(wrap_angle(e.baseline[j, 2] - rear[2]))))
    if hits:
        return hits[int(np.argmin(errors))]
    best, best_d = None, np.inf
    point = shapely.Point(centre[0], centre[1])
    for e in edges:
        if shapely.contains(e.polygon, point):
            return e
        d = float(shapely.distance(e.polygon, footprint))
        if d < best_d:
            best, best_d = e, d
    if best is None:
        raise RouteError("roadblock_ids", "the route has no lanes")
    return best


def lane_path(start: Edge, route: list[Block], edges: list[Edge]) -> list[Edge]:
    """Cheapest lane sequence from `start` to the last block of the 30-block window that starts
    at the start lane's block (Dijkstra over route lanes, cost = baseline length); when the
    window's end cannot be reached, the cheapest of the deepest paths found."""
    k = next((i for i, b in enumerate(route) if b is start.block), 0)
    target = route[k : k + CENTERLINE_WINDOW][-1]
    allowed = {id(e) for e in edges}
    tie = itertools.count()
    cost = {id(start): 1.0}
    depth = {id(start): 1}
    parent: dict[int, Edge | None] = {id(start): None}
    heap = [(1.0, next(tie), start)]
    done: set[int] = set()
    expanded: list[tuple[int, float, int, Edge]] = []  # depth, cost, order, edge
    end = None
    while heap:
        c, _, e = heapq.heappop(heap)
        if id(e) in done or c > cost[id(e)]:
            continue
        done.add(id(e))
        if e.block is target:
            end = e
            break
        expanded.append((depth[id(e)], c, len(expanded), e))
        for n in e.outgoing:
            if id(n) not in allowed or id(n) in done:
                continue
            alt = c + n.length
            if alt < cost.get(id(n), np.inf):
                cost[id(n)], depth[id(n)], parent[id(n)] = alt, depth[id(e)] + 1, e
                heapq.heappush(heap, (alt, next(tie), n))
    if end is None:
        deepest = max(d for d, *_ in expanded)
        end = min((x for x in expanded if x[0] == deepest), key=lambda x: (x[1], x[2]))[3]
    path = [end]
    while (p := parent[id(path[-1])]) is not None:
        path.append(p)
    return path[::-1]


def centerline(path: list[Edge]) -> np.ndarray:
    """(K, 3) the concatenated baseline vertices (x, y, heading) of a lane sequence."""
    return np.concatenate([e.baseline for e in path], 0)
