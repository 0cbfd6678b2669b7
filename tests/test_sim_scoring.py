"""The embedded world scored through metric caches with the NAVSIM v1.1 scorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autovla.data.manifest import load_samples
from autovla.scoring import MetricCache, load_cache, score_plans, score_sample
from autovla.scoring.cache import INTERSECTION, LANE, LANE_CONNECTOR, ROADBLOCK
from autovla.scoring.pdm_score import simulate_plans
from autovla.sim.export import generate_dataset
from autovla.sim.render import render_bev
from autovla.sim.scenarios import SCENARIO_TYPES


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("score") / "ds"
    generate_dataset(
        root,
        scenes=len(SCENARIO_TYPES),
        seed=11,
        image_size=(56, 28),
        progress=False,
        samples_per_scene=3,
    )
    return root, load_samples(root)


def test_expert_plans_score_high(data):
    root, samples = data
    rows = [score_sample(root, s, s.future_array()[None]).row(0) for s in samples]
    assert all(r["nc"] == 1 and r["dac"] == 1 for r in rows)
    pdms = np.array([r["pdms"] for r in rows])
    # the expert waits for pedestrians and oncoming traffic that PDM-Closed does not wait
    # for, so its progress (EP) is sometimes below PDM-Closed's (benchmarks: mean >= 0.95)
    assert pdms.mean() >= 0.9 and pdms.min() > 0.6
    assert all(r["ttc"] == 1 for r in rows)


def test_world_map_has_navsim_layers(data):
    root, samples = data
    for s in samples:
        c = load_cache(root, s)
        types = set(c.map_types.tolist())
        assert {LANE, ROADBLOCK} <= types
        if s.scene.road == "intersection":
            assert {LANE_CONNECTOR, INTERSECTION} <= types
        # the ego starts on the drivable area, inside an on-route lane
        r = score_plans(c, np.zeros((1, 8, 3)))
        assert r.dac[0] == 1.0 and r.ddc[0] == 1.0
        assert len(c.route_lane_ids) >= 1 and c.on_route.any()
        assert c.boxes.shape == (51, len(c.track_ids), 5)


def test_plan_into_lead_vehicle_has_nc_zero(data):
    """A plan whose tracked ego runs past the rear of the lead in its lane: at fault, NC 0."""
    root, samples = data
    checked = 0
    for s in samples:
        if s.scenario_type not in ("car_following", "stopped_queue", "lead_vehicle_hard_braking"):
            continue
        c = load_cache(root, s)
        box = c.boxes[:41]
        lead = (c.track_types == 0) & (np.abs(box[0, :, 1]) < 1) & (box[0, :, 0] > 0)
        if not lead.any() or s.ego.vx < 2:
            continue
        rear = np.min(box[:, lead, 0] - box[:, lead, 3] / 2, axis=1)  # (41,)
        t = np.arange(1, 11) * 0.5
        v = s.ego.vx
        a = 2 * (rear[40] + 10.0 - 4.049 - 4 * v) / 16  # ends 10 m past the lead's rear
        plan = np.stack([v * t + 0.5 * max(a, 0.0) * t**2, np.zeros(10), np.zeros(10)], -1)
        front = simulate_plans(c, plan[None])[0, :, 0] + 4.049
        if not (front > rear + 0.5).any():
            continue  # the tracker does not get there within 4 s
        sc = score_plans(c, np.stack([plan, s.future_array()]))
        assert sc.nc[0] == 0 and sc.pdms[0] == 0
        assert sc.nc[1] == 1
        checked += 1
    assert checked >= 2


def test_off_road_plan_has_dac_zero(data):
    root, samples = data
    s = next(x for x in samples if x.scenario_type == "free_cruise")
    k = np.arange(1, 11)
    plan = np.stack([4.0 * k, -3.0 * k, np.full(10, -0.6)], -1)  # veer off to the right
    sc = score_sample(root, s, plan[None])
    assert sc.dac[0] == 0 and sc.pdms[0] == 0


def test_pdm_closed_stops_for_the_red_light(tmp_path: Path):
    root = generate_dataset(
        tmp_path / "red", 2, 5, types=["red_light"], image_size=(56, 28), progress=False,
        samples_per_scene=1,
    )  # fmt: skip
    for s in load_samples(root):  # at t = 1.5 s the light is red for at least 4.5 s more
        assert s.scene.traffic_light == "red"
        c = load_cache(root, s)
        assert c.red_light_ids
        front = c.pdm_closed[:, 0] + 4.049
        assert front.max() < s.scene.traffic_light_distance + 0.5  # short of the stop line
        v = (s.scene.traffic_light_distance + 8.0) / 2.5  # a plan through it is not scored
        plan = np.stack([v * 0.5 * np.arange(1, 11), np.zeros(10), np.zeros(10)], -1)
        assert score_plans(c, plan[None]).nc[0] == 1.0  # NAVSIM does not score red lights


def test_batched_equals_single_and_shapes(data):
    root, samples = data
    s = samples[5]
    c = load_cache(root, s)
    rng = np.random.default_rng(0)
    plans = s.future_array()[None] + rng.normal(0, 0.3, (8, 10, 3)) * np.array([1, 1, 0.02])
    batch = score_plans(c, plans)
    for name in ("pdms", "nc", "dac", "ddc", "ttc", "comfort", "ep"):
        arr = getattr(batch, name)
        assert arr.shape == (8,) and ((arr >= 0) & (arr <= 1)).all()
    single = score_plans(MetricCache.load(root / s.scoring), plans[3:4])
    assert np.isclose(single.pdms[0], batch.pdms[3])


def test_missing_cache_is_a_clear_error_and_bev_draws(data, tmp_path: Path):
    root, samples = data
    with pytest.raises(FileNotFoundError, match=samples[0].id):
        load_cache(tmp_path, samples[0])
    img = render_bev(load_cache(root, samples[0]), {"expert": samples[0].future_array()})
    arr = np.asarray(img)
    assert arr.shape[2] == 3 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 4


def test_pdms_reward_is_nan_for_unscorable_samples(data, tmp_path: Path):
    import shutil

    from autovla.train.rewards import Completion, pdms

    root, samples = data
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    good, broken, none = samples[0], samples[1], samples[2].model_copy(update={"scoring": None})
    (copy / broken.scoring).write_bytes(b"not a cache")
    group = [good, good, broken, none]
    comps = [Completion(s.future_array(), "", "fast") for s in group]
    r = pdms(group, [copy] * 4, comps)
    want = score_sample(root, good, good.future_array()[None]).pdms[0]
    assert r[0] == r[1] == pytest.approx(want) and np.isnan(r[2]) and np.isnan(r[3])
