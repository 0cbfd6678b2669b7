"""Speed of the NAVSIM v1.1 scorer (autovla.scoring) on real-size scenes.

Scenes: embedded-world metric caches (a 4-way junction or a multi-lane road: lanes,
roadblocks, connectors, the junction, 100+ m of map around the ego) with their logged
agents topped up to 50 tracks (vehicles driving along the lanes, parked cars, pedestrians,
cones), and dense synthetic city maps as nuPlan draws them (a 3 x 3 grid of two-lane
roads within +-120 m, lanes cut into 25 m segments, a roadblock per segment, 16 connectors
per junction: ~500 polygons) with 50 tracks. Plans: the expert future plus noise, scored
in groups of 8 (as RFT calls it) and 64, on one core, after the cache's derived data
(polygon index) is built. Prints a table: plans/s, ms per call, the build time per cache
and where a call's time goes.

    .venv/bin/python benchmarks/bench_scoring.py [--scenes 12] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from autovla.geometry import to_local
from autovla.scoring import metrics as M
from autovla.scoring import pdm_score as P
from autovla.scoring.cache import MetricCache
from autovla.scoring.sim_cache import build_metric_cache
from autovla.sim.rollout import simulate
from autovla.sim.scenarios import make_scenario

TYPES = ("unprotected_left_turn", "car_following", "green_light_turn", "construction_lane_closure")


def top_up(cache: MetricCache, rng: np.random.Generator, n: int = 50) -> MetricCache:
    """Add tracks until there are n: agents along the lanes, parked cars, pedestrians."""
    lanes = [p for p, t in zip(cache.map_polygons, cache.map_types, strict=True) if t in (0, 1)]
    boxes, vel, types, ids = [cache.boxes], [cache.velocity], list(cache.track_types), []
    t = np.arange(51)[:, None] * 0.1
    for i in range(n - len(cache.track_ids)):
        lane = lanes[i % len(lanes)]
        pt = np.asarray(lane.representative_point().coords[0])
        kind = (0, 0, 0, 1, 3)[i % 5]
        h = rng.uniform(-np.pi, np.pi)
        v = {0: rng.uniform(0, 12), 1: 1.3, 3: 0.0}[kind]
        size = {0: (4.6, 1.9), 1: (0.6, 0.6), 3: (0.4, 0.4)}[kind]
        xy = pt + t * v * np.array([np.cos(h), np.sin(h)])
        b = np.concatenate([xy, np.full((51, 1), h), np.tile(size, (51, 1))], -1)
        boxes.append(b[:, None])
        vel.append(np.tile([v * np.cos(h), v * np.sin(h)], (51, 1))[:, None])
        types.append(kind)
        ids.append(f"extra{i}")
    return MetricCache(
        token=cache.token, ego=cache.ego, centerline=cache.centerline,
        route_lane_ids=cache.route_lane_ids, map_ids=cache.map_ids, map_types=cache.map_types,
        map_polygons=cache.map_polygons, track_ids=cache.track_ids + ids, track_types=types,
        boxes=np.concatenate(boxes, 1), velocity=np.concatenate(vel, 1),
        pdm_closed=cache.pdm_closed, pdm_progress=cache.pdm_progress,
        speed_limit=cache.speed_limit,
    )  # fmt: skip


def _strip(line: np.ndarray, width: float):
    import shapely

    return shapely.buffer(shapely.LineString(line), width / 2, cap_style="flat")


def city_cache(rng: np.random.Generator, n_tracks: int = 50) -> MetricCache:
    """A dense nuPlan-like map around the ego (see the module docstring) and tracks."""
    import shapely
    import shapely.affinity

    from autovla.scoring.cache import INTERSECTION, LANE, LANE_CONNECTOR, ROADBLOCK

    ids, types, polys, route = [], [], [], []
    half, w = 7.0, 3.5
    roads = (-80.0, 0.0, 80.0)
    xs = (-40.0, 40.0, 120.0)

    def add(oid, kind, poly):
        ids.append(oid)
        types.append(kind)
        polys.append(poly)

    for axis, positions, cross in (("h", roads, xs), ("v", xs, roads)):
        for c in positions:
            edges = [-150.0] + [q for x in cross for q in (x - half, x + half)] + [200.0]
            for a, b in zip(edges[::2], edges[1::2], strict=True):
                for s0 in np.arange(a, b, 25.0):
                    s1 = min(s0 + 25.0, b)
                    for side, sign in (("p", -1.0), ("n", 1.0)):  # direction of travel
                        rb = [sign * 0.0, sign * 2 * w]
                        pts = np.array([[s0, c + min(rb)], [s1, c + max(rb)]])
                        box = shapely.box(pts[0, 0], pts[0, 1], pts[1, 0], pts[1, 1])
                        if axis == "v":
                            box = shapely.affinity.affine_transform(box, [0, 1, 1, 0, 0, 0])
                        add(f"{axis}{c}_{s0}_{side}", ROADBLOCK, box)
                        for k in range(2):
                            off = c + sign * (k + 0.5) * w
                            lane = shapely.box(s0, off - w / 2, s1, off + w / 2)
                            if axis == "v":
                                lane = shapely.affinity.affine_transform(lane, [0, 1, 1, 0, 0, 0])
                            oid = f"{axis}{c}_{s0}_{side}{k}"
                            add(oid, LANE, lane)
                            if axis == "h" and c == 0.0 and side == "p":
                                route.append(oid)
    arc = np.linspace(0, np.pi / 2, 12)
    for cx in xs:
        for cy in roads:
            add(
                f"j{cx}_{cy}", INTERSECTION, shapely.box(cx - half, cy - half, cx + half, cy + half)
            )
            for arm in range(4):
                rot = np.array([[np.cos(arm * np.pi / 2), -np.sin(arm * np.pi / 2)],
                                [np.sin(arm * np.pi / 2), np.cos(arm * np.pi / 2)]])  # fmt: skip
                paths = {
                    "s0": np.array([[-half, -w / 2], [half, -w / 2]]),
                    "s1": np.array([[-half, -1.5 * w], [half, -1.5 * w]]),
                    "r": np.c_[-half + 1.5 * 0 + (half - 1.5 * w) * np.sin(arc),
                               -half + (half - 1.5 * w) * np.cos(arc)],
                    "l": np.c_[-half + (half + w / 2) * np.sin(arc),
                               half - (half + w / 2) * np.cos(arc)],
                }  # fmt: skip
                for name, path in paths.items():
                    xy = path @ rot.T + [cx, cy]
                    oid = f"j{cx}_{cy}_{arm}{name}"
                    add(oid, LANE_CONNECTOR, _strip(xy, w))
                    if cy == 0.0 and arm == 0 and name in ("s0", "s1"):
                        route.append(oid)
    xs_c = np.arange(-150.0, 200.0, 1.0)
    lanes = [p for p, t in zip(polys, types, strict=True) if t == LANE]
    boxes, vel = [], []
    t = np.arange(51)[:, None] * 0.1
    for _ in range(n_tracks):
        lane = lanes[rng.integers(len(lanes))]
        b = lane.bounds
        horizontal = b[2] - b[0] > b[3] - b[1]
        pt = np.array([rng.uniform(b[0], b[2]), (b[1] + b[3]) / 2]) if horizontal else \
            np.array([(b[0] + b[2]) / 2, rng.uniform(b[1], b[3])])  # fmt: skip
        h = (0.0 if horizontal else np.pi / 2) + rng.choice([0.0, np.pi])
        v = rng.uniform(0, 12)
        xy = pt + t * v * np.array([np.cos(h), np.sin(h)])
        boxes.append(np.concatenate([xy, np.full((51, 1), h), np.tile((4.6, 1.9), (51, 1))], -1))
        vel.append(np.tile([v * np.cos(h), v * np.sin(h)], (51, 1)))
    # the ego is on the eastbound road y = 0, in the lane at y = -1.75: shift so it is at 0
    shift = [0.0, 1.75]
    return MetricCache(
        token="city", ego=[0, 0, 0, 10.0, 0, 0, 0],
        centerline=np.c_[xs_c, np.zeros_like(xs_c), np.zeros_like(xs_c)],
        route_lane_ids=route, map_ids=ids, map_types=types,
        map_polygons=[shapely.affinity.translate(p, *shift) for p in polys],
        track_ids=[f"car{i}" for i in range(n_tracks)], track_types=np.zeros(n_tracks),
        boxes=np.stack(boxes, 1) + np.array([0.0, 1.75, 0, 0, 0]), velocity=np.stack(vel, 1),
        pdm_closed=np.zeros((51, 3)), pdm_progress=35.0, speed_limit=13.9,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5, help="timing runs; the best is kept")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    scenes, builds, polys = [], [], []
    for i in range(args.scenes):
        if i % 2:  # every other scene: a dense synthetic city map
            cache = city_cache(rng)
            future = np.c_[np.arange(1, 11) * 5.0, np.zeros(10), np.zeros(10)]
        else:
            name = TYPES[(i // 2) % len(TYPES)]
            scn = make_scenario(name, i)
            log = simulate(scn, 7.5)
            k = 20
            cache = top_up(build_metric_cache(scn, log, k, f"{name}-{i}"), rng)
            future = to_local(log.ego[k + 5 : k + 51 : 5, :3], log.ego[k, :3])
        t0 = time.perf_counter()
        P.map_context(cache).index.build()
        P.scoring_observation(cache)
        builds.append(time.perf_counter() - t0)
        polys.append(len(cache.map_ids))
        scenes.append((cache, future))
    noise = np.array([1.0, 0.3, 0.02])
    rows = [
        ("scenes (tracks, map polygons)", f"{len(scenes)}",
         f"{len(scenes[0][0].track_ids)} tracks, {min(polys)}-{max(polys)} polygons"),
        ("derived data per cache (index)", f"{1e3 * np.mean(builds):.0f} ms",
         f"max {1e3 * np.max(builds):.0f} ms, once per cache and process"),
    ]  # fmt: skip
    for group in (8, 64):
        plan_sets = [f[None] + rng.normal(0, 0.5, (group, 10, 3)) * noise for _, f in scenes]
        calls = []  # per call: the best of the repeats (the machine is shared)
        for (c, _), plans in zip(scenes, plan_sets, strict=True):
            best = np.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                P.score_plans(c, plans)
                best = min(best, time.perf_counter() - t0)
            calls.append(best)
        per_call = float(np.mean(calls))
        rows.append((f"score_plans, groups of {group}", f"{group / per_call:,.0f} plans/s",
                     f"{1e3 * per_call:.2f} ms per call (mean over scenes, best of "
                     f"{args.repeats}); slowest scene {1e3 * max(calls):.2f} ms"))  # fmt: skip
    # where a group-of-8 call spends its time (on a city scene)
    c, f = scenes[1]
    plans = f[None] + rng.normal(0, 0.5, (8, 10, 3)) * noise
    steps = {}

    def timed(name, fn, *a):
        best, out = np.inf, None
        for _ in range(20):
            t0 = time.perf_counter()
            out = fn(*a)
            best = min(best, time.perf_counter() - t0)
        steps[name] = best
        return out

    states = timed("interpolate + track (LQR, bicycle)", P.simulate_plans, c, plans)
    ctx, obs = P.map_context(c), P.scoring_observation(c)
    coords = timed("ego footprint", M.ego_coords, states)
    areas = timed("ego areas (polygon index)", M.ego_areas, ctx, states, coords)
    timed("no at-fault collision", M.no_at_fault_collision, obs, states, coords, areas)
    timed("time to collision", M.time_to_collision, obs, states, coords, areas)
    timed("comfort (savgol operators)", M.comfort, states)
    timed("progress + DDC", lambda: (M.ego_progress(ctx.centerline, coords),
                                     M.driving_direction_compliance(coords, areas)))  # fmt: skip
    for name, sec in steps.items():
        rows.append((f"  {name}", f"{1e3 * sec:.2f} ms", "group of 8"))
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  {'value':>16}  note")
    for name, value, note in rows:
        print(f"{name:<{w}}  {value:>16}  {note}")


if __name__ == "__main__":
    main()
