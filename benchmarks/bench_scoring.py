"""Speed of the NAVSIM v1.1 scorer (autovla.scoring) on real-size scenes.

Scenes: embedded-world metric caches (a 4-way junction or a multi-lane road: lanes,
roadblocks, connectors, the junction, 100+ m of map around the ego) with their logged
agents topped up to 50 tracks (vehicles driving along the lanes, parked cars, pedestrians,
cones). Plans: the expert future plus noise, scored in groups of 8 (as RFT calls it) and
64, on one core, after the cache's derived data (polygon index) is built. Prints a table:
plans/s, ms per call, the build time per cache and where a call's time goes.

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5, help="timing runs; the best is kept")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    scenes, builds, polys = [], [], []
    for i in range(args.scenes):
        name = TYPES[i % len(TYPES)]
        scn = make_scenario(name, i)
        log = simulate(scn, 7.5)
        k = 20
        cache = top_up(build_metric_cache(scn, log, k, f"{name}-{i}"), rng)
        future = to_local(log.ego[k + 5 : k + 51 : 5, :3], log.ego[k, :3])
        t0 = time.perf_counter()
        P.map_context(cache)
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
        best = np.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for (c, _), plans in zip(scenes, plan_sets, strict=True):
                P.score_plans(c, plans)
            best = min(best, time.perf_counter() - t0)
        rate = f"{group * len(scenes) / best:,.0f} plans/s"
        per_call = f"{1e3 * best / len(scenes):.2f} ms per call"
        rows.append((f"score_plans, groups of {group}", rate, per_call))
    # where a group-of-8 call spends its time
    c, f = scenes[0]
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
