"""Open-loop metrics on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from autovla.data.schema import SceneFacts, SceneObject
from autovla.eval.metrics import (
    ade,
    at_horizons,
    bev_collision,
    bootstrap_ci,
    bootstrap_diff_ci,
    collisions_per_step,
    ego_box,
    fde,
    l2_per_step,
    latency_percentiles,
    rasterize,
)
from autovla.geometry import box_corners


def straight(v=5.0, steps=10):
    t = np.arange(1, steps + 1) * 0.5
    return np.stack([v * t, np.zeros_like(t), np.zeros_like(t)], -1)


def test_l2_of_a_shifted_plan():
    gt = straight()[None]
    pred = gt.copy()
    pred[..., 1] += 0.5  # 0.5 m sideways at every step
    assert np.allclose(l2_per_step(pred, gt), 0.5)
    # error that grows 0.1 m per step: steps at 1/2/3 s are k = 1, 3, 5
    grow = gt.copy()
    grow[0, :, 0] += 0.1 * np.arange(1, 11)
    uni = at_horizons(l2_per_step(grow, gt), "uniad")
    stp = at_horizons(l2_per_step(grow, gt), "stp3")
    assert uni[1.0][0] == pytest.approx(0.2) and uni[3.0][0] == pytest.approx(0.6)
    assert stp[1.0][0] == pytest.approx(0.15)  # mean(0.1, 0.2)
    assert stp[3.0][0] == pytest.approx(0.35)  # mean(0.1 ... 0.6)
    assert ade(grow, gt)[0] == pytest.approx(0.55)
    assert fde(grow, gt)[0] == pytest.approx(1.0)
    assert fde(grow, gt, steps=6)[0] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="convention"):
        at_horizons(l2_per_step(grow, gt), "bogus")


def test_rasterize_known_cells():
    # a 1 m x 1 m square centred at (0.5, 0.5): covers cell centres 0.25 and 0.75 in x and y
    sq = np.array([[[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]])
    g = rasterize(sq)
    assert g.sum() == 4
    assert g[100:102, 100:102].all()
    assert not rasterize(sq + 60.0).any()  # outside the +-50 m grid


def _car(x, y, steps=6, vx=0.0):
    fut = [(x + vx * 0.5 * (k + 1), y, 0.0) for k in range(steps)]
    return SceneObject(id=f"c{x}", kind="vehicle", box=(x, y, 0, 4.0, 2.0), future=fut)


def test_collision_on_a_known_grid():
    gt = straight(2.0)  # ground truth stops short of the parked car: 1, 2, ... 6 m
    scene = SceneFacts(objects=[_car(14.0, 0.0)])  # spans x 12..16
    plan = straight(4.0)  # poses at 2, 4, ... 12 m
    col = bev_collision(plan, gt, scene)
    # box front = x + 0.5 + 2.042: 10.54 m at step 3 (clear), 12.54 m at step 4 (covers the
    # cell centred at 12.25 m, inside the car)
    assert col.tolist() == [False, False, False, False, True, True]
    # a plan that swerves 5 m to the left clears the car
    side = plan.copy()
    side[:, 1] = 5.0
    assert not bev_collision(side, gt, scene).any()
    # pedestrians count, cones do not
    cone = SceneFacts(objects=[_car(14.0, 0.0).model_copy(update={"kind": "traffic_cone"})])
    assert not bev_collision(plan, gt, cone).any()


def test_fast_collision_matches_grid_intersection(rng):
    for _ in range(30):
        objs = box_corners(
            np.stack([rng.uniform(-8, 8, 5), rng.uniform(-4, 4, 5), rng.uniform(-3, 3, 5)], -1),
            rng.uniform(0.4, 5, 5),
            rng.uniform(0.4, 2, 5),
        )
        pose = np.array([[rng.uniform(-3, 3), rng.uniform(-2, 2), rng.uniform(-3, 3)]])
        grid = bool(np.any(rasterize(ego_box(pose)) & rasterize(objs)))
        assert collisions_per_step(pose, [objs])[0] == grid


def test_truth_collision_is_not_counted():
    scene = SceneFacts(objects=[_car(14.0, 0.0)])
    plan = straight(4.0)
    assert not bev_collision(plan, plan, scene).any()


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    v = rng.normal(1.0, 1.0, 400)
    m, lo, hi = bootstrap_ci(v, seed=1)
    assert lo < m < hi and lo < 1.0 < hi and hi - lo < 0.4
    assert bootstrap_ci(v, seed=1) == (m, lo, hi)
    d, dlo, dhi = bootstrap_diff_ci(v, v + 0.5, seed=2)
    assert d == pytest.approx(0.5) and dlo == pytest.approx(0.5) and dhi == pytest.approx(0.5)
    d, dlo, dhi = bootstrap_diff_ci(v, v[:200] + 2.0, paired=False, seed=2)
    assert dlo < d < dhi and dlo > 1.0
    with pytest.raises(ValueError):
        bootstrap_diff_ci(v, v[:3])


def test_latency_percentiles():
    p = latency_percentiles(np.arange(1, 101) / 100)
    assert p["p50"] == pytest.approx(0.505) and p["max"] == 1.0 and p["n"] == 100
    assert latency_percentiles([]) == {"n": 0}
