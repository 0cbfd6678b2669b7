"""PDM-Closed: IDM proposals along the centerline, leaders, red lights, the step-1 quirk."""

from __future__ import annotations

import numpy as np
import shapely

from autovla.scoring.pdm_closed import (
    Detections,
    attach_pdm_closed,
    pdm_closed_trajectory,
    planner_observation,
    select_detections,
)
from autovla.scoring.pdm_score import score_plans
from tests.scoring_fixtures import road_cache, track

VEHICLE, PEDESTRIAN = 0, 1


def test_free_road_follows_the_centerline_and_brakes_at_step_one():
    cache = road_cache(speed=10.0)
    traj = pdm_closed_trajectory(cache)
    assert traj.shape == (51, 3)
    assert np.abs(traj[:, 1]).max() < 1e-9  # ties go to the first path: the centerline
    step = np.diff(traj[:, 0])
    # x1 = x0 + 0.1 v0; the step-1 leader row is all zeros, so v1 = v0 - 0.1 * 3.0
    assert np.isclose(step[0], 1.0) and np.isclose(step[1], 0.97)
    # then the fastest policy (1.0 x 15 m/s) wins and accelerates at up to 1.5 m/s^2
    assert step[-1] > 1.0 and (np.diff(step[2:]) <= 0.15 * 0.1 + 1e-9).all()


def test_stops_behind_a_stopped_car_and_scores_clean():
    car = track(40.0, 0.0)  # rear at 37.75 m
    cache = attach_pdm_closed(road_cache(speed=10.0, tracks=[(*car, VEHICLE)]))
    front = cache.pdm_closed[:, 0] + 4.049
    assert front.max() < 37.75 and front.max() > 30.0
    r = score_plans(cache, cache.pdm_closed[5::5][None])
    assert r.nc[0] == 1.0 and r.dac[0] == 1.0
    assert 0 < cache.pdm_progress < 40.0


def test_red_light_connector_is_a_static_obstacle():
    cache = road_cache(speed=10.0)
    red = shapely.box(30.0, -1.75, 45.0, 1.75)
    traj = pdm_closed_trajectory(cache, red_lights=[red])
    assert traj[:, 0].max() + 4.049 < 30.0
    assert pdm_closed_trajectory(cache)[:, 0].max() > 45.0  # without it: drives on


def test_planner_observation_limits_and_initial_overlap():
    n = 60
    det = Detections(
        [f"v{i}" for i in range(n)] + ["far", "touching"],
        [VEHICLE] * (n + 2),
        np.array(
            [[10.0 + 1.5 * i, 8.0, 0, 4, 2] for i in range(n)]
            + [[150.0, 0, 0, 4, 2], [1.0, 1.5, 0, 4, 2]]
        ),
        np.zeros((n + 2, 2)),
    )
    keep = select_detections(det)
    assert len(keep) == 50 and n not in keep  # 50 nearest vehicles, none beyond 100 m
    assert n + 1 in keep
    obs = planner_observation(det)
    i = int(np.nonzero(keep == n + 1)[0][0])
    assert obs.ignored[i] and obs.ignored.sum() == 1  # overlaps the ego at t = 0
    # agents move at constant speed along their heading, refreshed every 0.2 s
    det2 = Detections(["a"], [VEHICLE], [[30.0, 5.0, np.pi, 4, 2]], [[-5.0, 0.0]])
    b = planner_observation(det2).scoring.boxes[:, 0, 0]
    assert b[0] == b[1] == 30.0 and np.isclose(b[2], 29.0) and np.isclose(b[3], 29.0)
