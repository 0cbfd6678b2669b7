"""Metric caches from an OpenScene log over a GDAL-written nuPlan map (tests/_nuplan_fixtures.py):
the ego frame, the interpolated observation, red lights, PDM-Closed, hand-worked scores and
bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

from autovla.scoring import score_plans
from autovla.scoring.cache import LANE, LANE_CONNECTOR, MetricCache
from autovla.scoring.navsim_cache import (
    SceneError,
    build_cache,
    scene_inputs,
    scene_window,
    scoring_observation,
)
from autovla.scoring.nuplan_map import MapStore
from autovla.scoring.route import RouteError

sys.path.insert(0, str(Path(__file__).parent))
import _nuplan_fixtures as F

T = np.arange(1, 11) * 0.5  # plan times (s)


@pytest.fixture(scope="module")
def nmap(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    F.write_map(root)
    return MapStore(root).get(F.LOCATION)


def inputs(nmap, **log):
    frames = F.make_log(**log)
    return scene_inputs(scene_window(frames, frames[3]["token"]), nmap)


@pytest.fixture(scope="module")
def cache(nmap) -> MetricCache:
    return build_cache(inputs(nmap))


# --- what goes into the cache ----------------------------------------------------------------
def test_everything_is_in_the_current_ego_frame(nmap):
    si = inputs(nmap)
    np.testing.assert_array_equal(si.ego, [0, 0, 0, F.EGO_V, 0, 0, 0])
    # the ego at local (60, -1.75) heading east: lane 1001 spans x 0..100, y -3.5..0 locally
    poly = si.map_polygons[si.map_ids.index("1001")]
    assert shapely.hausdorff_distance(poly, shapely.box(-60, -1.75, 40, 1.75)) < 1e-6
    assert si.map_types[si.map_ids.index("1001")] == LANE
    assert si.map_types[si.map_ids.index("2001")] == LANE_CONNECTOR
    np.testing.assert_allclose(si.centerline[[0, -1]], [[-60, 0, 0], [160, 0, 0]], atol=1e-6)
    assert si.route_lane_ids == ["1001", "1002", "2001", "2002", "1003", "1004"]
    assert si.speed_limit == F.SPEED_LIMIT
    assert si.red_light_ids == ["2001"]  # 2003 is red too, but not on the route
    red = si.red_light_polygons[0]
    assert shapely.hausdorff_distance(red, shapely.box(40, -1.75, 60, 1.75)) < 1e-6
    # the planner sees the current frame only
    assert si.detections.ids == ["lead", "parked", "ped"]
    np.testing.assert_allclose(si.detections.boxes[0, 1], [30, -6, 0, 4.5, 1.9], atol=1e-6)


def test_observation_interpolated_per_track(nmap):
    obs = inputs(nmap).observation
    assert obs.ids == ["lead", "parked", "ped", "oncoming", "cone"]
    assert obs.types.tolist() == [0, 0, 1, 0, 3]
    lead, parked, ped, oncoming, cone = range(5)
    b, v = obs.boxes, obs.velocity
    assert b.shape == (51, 5, 5) and v.shape == (51, 5, 2)
    # lead: 10 m ahead in the left lane at 12 m/s -> x = 10 + 12 t at every 0.1 s step
    np.testing.assert_allclose(b[:, lead, 0], 10 + 12 * np.arange(51) * 0.1, atol=1e-6)
    np.testing.assert_allclose(b[:, lead, 1:], [[3.5, 0, 4.8, 2.0]] * 51, atol=1e-6)
    np.testing.assert_allclose(v[:, lead], [[12, 0]] * 51, atol=1e-6)
    np.testing.assert_allclose(v[:, parked], 0, atol=1e-9)
    np.testing.assert_allclose(b[23, ped, :2], [-10 + 2.3, -10.25], atol=1e-6)
    # oncoming: seen in frames 5..12 = iterations 2..9 = steps 10..45, nothing outside
    here = np.isfinite(b[:, oncoming, 0])
    assert np.flatnonzero(here).tolist() == list(range(10, 46))
    assert np.isnan(v[~here, oncoming]).all()
    np.testing.assert_allclose(b[10:46, oncoming, 0], 80 - 10 * np.arange(36) * 0.1, atol=1e-6)
    np.testing.assert_allclose(np.abs(b[10:46, oncoming, 2]), np.pi, atol=1e-6)
    # cone: seen once (frame 8) -> at every step, unchanged; static -> no velocity
    np.testing.assert_allclose(b[:, cone], [[38, -3.25, 0.3, 0.4, 0.4]] * 51, atol=1e-6)
    np.testing.assert_array_equal(v[:, cone], 0.0)


def _frame(k: int, boxes, names, tracks, vel=None) -> dict:
    n = len(boxes)
    return {
        "token": f"t{k}",
        "ego2global_translation": [0.0, 0.0, 0.0],
        "ego2global_rotation": [1.0, 0.0, 0.0, 0.0],
        "anns": {
            "gt_boxes": np.array(boxes, dtype=np.float64).reshape(n, 7),
            "gt_names": np.array(names),
            "gt_velocity_3d": np.zeros((n, 3)) if vel is None else np.array(vel),
            "track_tokens": list(tracks),
            "instance_tokens": list(tracks),
        },
    }


def test_heading_is_unwrapped_across_pi_and_gaps_are_bridged():
    frames = [_frame(k, [], [], []) for k in range(14)]
    # a car turning through pi: 3.0 rad at iteration 1, -3.0 (= 3.283) at iteration 2
    frames[4] = _frame(4, [[0, 0, 0, 4, 2, 1, 3.0]], ["vehicle"], ["car"])
    frames[5] = _frame(5, [[1, 0, 0, 4, 2, 1, -3.0]], ["vehicle"], ["car"])
    # a pedestrian seen at iterations 3 and 6 only: linear across the gap
    frames[6] = _frame(6, [[0, 5, 0, 1, 1, 1, 0]], ["pedestrian"], ["p"], [[1, 0, 0]])
    frames[9] = _frame(9, [[3, 5, 0, 1, 1, 1, 0]], ["pedestrian"], ["p"], [[3, 0, 0]])
    poses = np.zeros((14, 3))
    obs = scoring_observation(frames, poses)
    car, ped = obs.ids.index("car"), obs.ids.index("p")
    h = obs.boxes[5:11, car, 2]
    mid = np.unwrap(h)
    np.testing.assert_allclose(mid, np.linspace(3.0, 2 * np.pi - 3.0, 6), atol=1e-9)
    assert np.isnan(obs.boxes[:5, car]).all() and np.isnan(obs.boxes[11:, car]).all()
    np.testing.assert_allclose(obs.boxes[15:31, ped, 0], np.linspace(0, 3, 16), atol=1e-9)
    np.testing.assert_allclose(obs.velocity[20, ped], [1 + 2 * 5 / 15, 0], atol=1e-9)


# --- hand-worked scores ----------------------------------------------------------------------
def plan(x, y) -> np.ndarray:
    """Poses at 0.5 s from positions; headings along the path."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    h = np.arctan2(np.gradient(y, T), np.gradient(x, T))
    return np.stack([x, y, h], -1)


STRAIGHT = plan(10 * T, 0 * T)  # on along lane 1001 at 10 m/s, over the red stop line at 4 s
# right into the carpark, slowing, ending against the parked car's rear (it spans x 27.75..32.25)
PARKED = plan(10 * T - 0.75 * T**2, -3 * (1 - np.cos(np.pi * np.minimum(T, 3) / 3)))
# left across the oncoming lane and off the road (y = 15 m is 8 m past the road's edge)
OFF_ROAD = plan(10 * T, 7.5 * (1 - np.cos(np.pi * np.minimum(T, 4) / 4)))


def test_hand_worked_scores(cache):
    r = score_plans(cache, np.stack([STRAIGHT, PARKED, OFF_ROAD]))
    # straight on: nothing hit, on the road, nothing ahead within 0.9 s, smooth, and more
    # progress (40 m) than PDM-Closed (which stops for the red light) -> EP 1 -> PDMS 1
    assert r.progress[0] == pytest.approx(40.0, abs=0.05)
    assert (r.nc[0], r.dac[0], r.ttc[0], r.comfort[0], r.ep[0]) == (1, 1, 1, 1, 1)
    assert r.pdms[0] == pytest.approx(1.0)
    # into the parked car: the ego moves, the car stands -> at fault, vehicle -> NC 0 -> 0
    assert r.nc[1] == 0 and r.dac[1] == 1 and r.pdms[1] == 0
    # off the road: a corner outside every roadblock/intersection/carpark -> DAC 0 -> 0
    assert r.dac[2] == 0 and r.pdms[2] == 0


def test_pdm_closed_stops_for_the_red_light(nmap, cache):
    front = cache.pdm_closed[:, 0] + 4.049  # rear axle + front overhang
    assert front.max() < 40.0  # the red connector starts 40 m ahead of the rear axle
    assert 0 < cache.pdm_progress < 40.0
    green = build_cache(inputs(nmap, red=False))
    assert green.red_light_ids == [] and green.pdm_closed[:, 0].max() + 4.049 > 40.0
    # with a green light PDM-Closed gets further than the 10 m/s plan: EP = 40 / its progress
    r = score_plans(green, STRAIGHT[None])
    ep = r.progress[0] / green.pdm_progress
    assert 0.5 < ep < 1 and r.ep[0] == pytest.approx(ep)
    assert r.pdms[0] == pytest.approx((5 * ep + 5 + 2) / 12)


def test_cache_file_round_trip(tmp_path, cache):
    cache.save(tmp_path / "c.npz")
    back = MetricCache.load(tmp_path / "c.npz")
    plans = np.stack([STRAIGHT, PARKED, OFF_ROAD])
    a, b = score_plans(cache, plans), score_plans(back, plans)
    np.testing.assert_array_equal(a.pdms, b.pdms)


# --- bad input -------------------------------------------------------------------------------
def test_bad_scenes_name_the_field(nmap):
    with pytest.raises(SceneError, match="missing or empty") as e:
        inputs(nmap, roadblock_ids=[])
    assert e.value.field == "roadblock_ids"
    with pytest.raises(RouteError, match="'4242' is neither") as e:
        inputs(nmap, roadblock_ids=["11", "4242"])
    assert e.value.field == "roadblock_ids"
    # the ego on the lone roadblock 16, 300 m from the route: off the route
    with pytest.raises(SceneError, match="starts off the route") as e:
        inputs(nmap, ego_x0=550.0)
    assert e.value.field == "roadblock_ids"
    frames = F.make_log()
    del frames[6]["anns"]
    with pytest.raises(SceneError, match="no annotations") as e:
        scene_inputs(scene_window(frames, frames[3]["token"]), nmap)
    assert e.value.field == "anns"
    frames = F.make_log()
    frames[4]["anns"]["gt_names"][0] = "unicorn"
    with pytest.raises(SceneError, match="unicorn") as e:
        scene_inputs(scene_window(frames, frames[3]["token"]), nmap)
    assert e.value.field == "anns.gt_names"
    frames = F.make_log(n=13)
    with pytest.raises(SceneError, match="10 after") as e:
        scene_window(frames, frames[3]["token"])
    with pytest.raises(SceneError, match="no frame"):
        scene_window(frames, "nope")
