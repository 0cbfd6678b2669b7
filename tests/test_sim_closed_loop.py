"""Closed loop: the expert drives well through the planner interface; bad plans are punished."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autovla.sim.closed_loop import ClosedLoopEpisode, expert_episode, run_episode


@pytest.mark.parametrize(
    ("name", "seed"),
    [
        ("lead_vehicle_hard_braking", 0),
        ("unprotected_left_turn", 1),
        ("construction_lane_closure", 1),
    ],
)
def test_expert_closed_loop_driving_score(name, seed, tmp_path: Path):
    r = expert_episode(name, seed, tmp_path, image_size=(56, 28))
    assert r.driving_score >= 0.95 and r.route_completion >= 0.95
    assert not any(r.infractions.values())


def test_observation_is_a_sample_without_answer(tmp_path: Path):
    ep = ClosedLoopEpisode("pedestrian_crossing", 2, tmp_path, image_size=(56, 28))
    sample, root = ep.observe()
    assert sample.future is None and sample.meta_action is None
    assert sample.num_frames == 4 and all((root / p).is_file() for p in sample.cameras["front"])
    assert sample.history_array().shape == (4, 3)
    plan = ep.expert_plan()
    assert plan.shape == (10, 3) and plan[-1, 0] > 0
    with pytest.raises(ValueError, match=r"\(10, 3\)"):
        ep.step(np.zeros((8, 3)))


def test_standing_still_and_crashing_are_scored(tmp_path: Path):
    still = run_episode(
        lambda s, root: np.zeros((10, 3)), "free_cruise", 0, tmp_path / "a", (56, 28), 8.0
    )
    assert still.route_completion < 0.3 and not still.success

    def ram(sample, root):  # full speed straight ahead, whatever is there
        v = max(sample.ego.vx, 12.0)
        return np.stack([v * 0.5 * np.arange(1, 11), np.zeros(10), np.zeros(10)], -1)

    crash = run_episode(ram, "stopped_queue", 0, tmp_path / "b", (56, 28), 8.0)
    assert crash.infractions["collision_vehicle"] >= 1
    assert crash.driving_score <= 0.6 * crash.route_completion + 1e-9


def test_plan_scores_replay_the_logged_state():
    """From a logged instant, the expert's own 5 s future scores ~1, standing still and
    ramming the stopped queue are punished, and forks never disturb each other."""
    from autovla.geometry import to_local
    from autovla.sim.closed_loop import plan_scores
    from autovla.sim.rollout import simulate
    from autovla.sim.scenarios import make_scenario

    name, seed, t = "stopped_queue", 0, 2.0
    log = simulate(make_scenario(name, seed), t + 5.0)
    k = round(t * 10)
    expert = to_local(log.ego[k + 5 : k + 51 : 5, :3], log.ego[k, :3])
    still = np.zeros((10, 3))
    ram = np.stack([7.0 * np.arange(1, 11), np.zeros(10), np.zeros(10)], -1)
    scores = plan_scores(name, seed, t, np.stack([expert, still, ram, expert]))
    assert scores[0] >= 0.97 and scores[3] == scores[0]
    # standing still: the LQR tracker brakes smoothly (time constant ~1.1 s), so the ego
    # rolls on ~4 s worth of its speed decay before stopping, well short of the expert
    assert scores[1] < 0.45
    assert scores[2] <= 0.6 + 1e-9  # at least one vehicle collision
    with pytest.raises(ValueError, match=r"\(N, 10, 3\)"):
        plan_scores(name, seed, t, expert)
