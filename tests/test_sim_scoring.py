"""Plan scoring: expert scores high, collisions and off-road plans score zero, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autovla.data.manifest import load_samples
from autovla.sim.export import generate_dataset
from autovla.sim.scenarios import SCENARIO_TYPES
from autovla.sim.scoring import load_scoring, score_plans, score_sample, track


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


def test_expert_plan_scores_high(data):
    root, samples = data
    scores = [score_sample(root, s, s.future_array()[None]) for s in samples]
    pdms = np.array([sc.pdms[0] for sc in scores])
    assert pdms.mean() >= 0.95
    assert all(sc.nc[0] == 1 and sc.dac[0] == 1 for sc in scores)
    assert all(sc.red_light[0] == 1 and sc.pedestrian[0] == 1 for sc in scores)


def test_plan_into_lead_vehicle_has_nc_zero(data):
    root, samples = data
    checked = 0
    for s in samples:
        if s.scenario_type not in ("car_following", "stopped_queue", "lead_vehicle_hard_braking"):
            continue
        d = load_scoring(root, s)
        ahead = [
            j
            for j in range(len(d.sizes))
            if d.kinds[j] == 0 and 0 < d.agents[j, 0, 0] < 60 and abs(d.agents[j, 0, 1]) < 1.0
        ]
        if not ahead or s.ego.vx < 2:
            continue
        target = min(d.agents[j, 30, 0] for j in ahead)  # the lead's position at 3 s
        t = np.arange(1, 11) * 0.5
        plan = np.stack([np.minimum(t / 3.0, 1.2) * (target + 1.0), np.zeros(10), np.zeros(10)], -1)
        sc = score_plans(d, np.stack([plan, s.future_array()]))
        assert sc.nc[0] == 0 and sc.pdms[0] == 0
        assert sc.nc[1] == 1
        checked += 1
    assert checked >= 2


def test_off_road_plan_has_dac_zero(data):
    root, samples = data
    s = next(x for x in samples if x.scenario_type == "free_cruise")
    d = load_scoring(root, s)
    k = np.arange(1, 11)
    plan = np.stack([4.0 * k, -3.0 * k, np.full(10, -0.6)], -1)  # veer off to the right
    sc = score_plans(d, plan[None])
    assert sc.dac[0] == 0 and sc.pdms[0] == 0


def test_running_the_red_light_is_flagged(tmp_path: Path):
    root = generate_dataset(
        tmp_path / "red",
        2,
        5,
        types=["red_light"],
        image_size=(56, 28),
        progress=False,
        samples_per_scene=1,
    )
    samples = load_samples(root)
    for s in samples:  # at t = 1.5 s the light is red for at least 4.5 s more
        assert s.scene.traffic_light == "red"
        d = load_scoring(root, s)
        v = (s.scene.traffic_light_distance + 8.0) / 2.5  # reach the line well within 4 s
        plan = np.stack([v * 0.5 * np.arange(1, 11), np.zeros(10), np.zeros(10)], -1)
        sc = score_plans(d, np.stack([plan, s.future_array()]))
        assert sc.red_light[0] == 0 and sc.red_light[1] == 1


def test_batched_equals_single_and_shapes(data):
    root, samples = data
    s = samples[5]
    d = load_scoring(root, s)
    rng = np.random.default_rng(0)
    plans = s.future_array()[None] + rng.normal(0, 0.3, (8, 10, 3)) * np.array([1, 1, 0.02])
    batch = score_plans(d, plans)
    for name in ("pdms", "nc", "dac", "ttc", "comfort", "ep", "red_light", "pedestrian"):
        arr = getattr(batch, name)
        assert arr.shape == (8,) and ((arr >= 0) & (arr <= 1)).all()
    single = score_plans(d, plans[3:4])
    assert np.isclose(single.pdms[0], batch.pdms[3])
    with pytest.raises(ValueError, match=r"\(N, 10, 3\)"):
        score_plans(d, plans[:, :8])


def test_tracker_follows_a_straight_plan():
    plan = np.stack([np.arange(1, 11) * 5.0, np.zeros(10), np.zeros(10)], -1)  # 10 m/s
    st = track(plan[None], v0=10.0, steps=40)[0]
    assert abs(st[-1, 0] - 40.0) < 0.5 and abs(st[-1, 1]) < 1e-6 and abs(st[-1, 3] - 10.0) < 0.2


def test_missing_sidecar_is_a_clear_error(data, tmp_path: Path):
    _, samples = data
    with pytest.raises(FileNotFoundError, match=samples[0].id):
        load_scoring(tmp_path, samples[0])
