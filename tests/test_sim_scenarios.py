"""Scenario library: types, bad input, and the expert's safety over many seeds (no rendering)."""

from __future__ import annotations

import pytest

from autovla.sim.rollout import expert_problems, simulate
from autovla.sim.scenarios import SCENARIO_TYPES, make_scenario

# A few seeds keep the suite fast; the sweep over 200 seeds of every type is
# `python benchmarks/bench_sim.py --scenes 0 --safety-seeds 200` (exits 1 on any problem).
SEEDS = range(3)


def test_library_has_ten_types_with_both_flags():
    assert len(SCENARIO_TYPES) >= 10
    assert set(SCENARIO_TYPES.values()) == {True, False}


def test_unknown_type_lists_valid_ones():
    with pytest.raises(ValueError, match="free_cruise") as e:
        make_scenario("flying_car", 0)
    assert "unprotected_left_turn" in str(e.value)


@pytest.mark.parametrize(
    ("kw", "word"), [({"lanes": 5}, "1..4"), ({"lighting": "noon"}, "day, dusk")]
)
def test_out_of_range_parameter(kw, word):
    with pytest.raises(ValueError, match=word):
        make_scenario("free_cruise", 0, **kw)


def test_same_seed_same_world_different_seed_differs():
    a = simulate(make_scenario("cut_in", 3), 3.0)
    b = simulate(make_scenario("cut_in", 3), 3.0)
    c = simulate(make_scenario("cut_in", 4), 3.0)
    assert (a.ego == b.ego).all() and (a.agents == b.agents).all()
    assert a.ego.shape != c.ego.shape or not (a.ego == c.ego).all()


@pytest.mark.parametrize("name", list(SCENARIO_TYPES))
def test_expert_never_collides_nor_leaves_road(name):
    problems = [p for seed in SEEDS for p in expert_problems(name, seed, duration=8.0)]
    assert problems == []


def test_scenarios_do_what_they_say():
    braking = simulate(make_scenario("lead_vehicle_hard_braking", 1), 8.0)
    assert braking.a.min() < -3.5  # the lead brakes hard
    assert braking.ego[-1, 3] < braking.ego[0, 3] - 3  # and the expert slows down
    red = simulate(make_scenario("red_light", 2), 4.0)
    assert red.ego[-1, 3] < red.ego[0, 3]  # approaching a red light: slowing
    closure = simulate(make_scenario("construction_lane_closure", 0), 10.0)
    assert abs(closure.ego_d[-1]) > 2.5  # changed lane around the cones
