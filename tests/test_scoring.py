"""The NAVSIM v1.1 scorer: worked examples for every metric, against hand-made caches."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy.signal import savgol_filter

from autovla.scoring import metrics as M
from autovla.scoring.interpolate import reference_states
from autovla.scoring.map_index import PolygonIndex
from autovla.scoring.pdm_score import score_plans, simulate_plans
from autovla.scoring.tracker import AX, HEADING, N_STATE, fit_profiles, initial_state, simulate
from tests.scoring_fixtures import road_cache, straight_plan, track

VEHICLE, PEDESTRIAN, CONE = 0, 1, 3


# --- interpolation -----------------------------------------------------------------------
def test_plan_interpolated_to_41_states_with_unwrapped_heading():
    plan = np.zeros((10, 3))
    plan[:, 0] = np.arange(1, 11) * 5.0
    plan[0, 2], plan[1, 2] = 3.0, -3.0  # crosses +-pi between poses 1 and 2
    ref = reference_states(plan[None])[0]
    assert ref.shape == (41, 3)
    np.testing.assert_allclose(ref[2], [2.0, 0.0, 1.2])  # 0.4 of the way to pose 1
    np.testing.assert_allclose(ref[5], plan[0])
    # from 3.0 to -3.0 the short way (through pi): 3.0 + 0.2 * (2 pi - 6) at state 6
    expected = 3.0 + 0.2 * (2 * np.pi - 6.0)
    assert np.isclose(ref[6, 2], expected)
    np.testing.assert_allclose(ref[40], plan[7])  # 4 s: pose 8; poses 9 and 10 unused


# --- tracker -------------------------------------------------------------------------------
def _reference_lqr_step(ref, state, v_prof, curv, k):
    """NAVSIM's lateral LQR for one state, written with the explicit matrix products."""
    dt, wheelbase, horizon = 0.1, 3.089, 10
    t = v_prof.shape[0]
    ri = min(k + horizon, t - 1)
    v = state[3]
    accel = -(10.0 / 11.0) * (v - v_prof[ri])
    vj = v + accel * dt * np.arange(horizon)
    kw = np.concatenate([curv[k:ri], np.full(horizon - (ri - k), curv[ri])])
    dx, dy, hr = state[0] - ref[k, 0], state[1] - ref[k, 1], ref[k, 2]
    x0 = np.array([-dx * np.sin(hr) + dy * np.cos(hr), np.arctan2(np.sin(state[2] - hr),
                   np.cos(state[2] - hr)), state[7]])  # fmt: skip
    a, b, g = np.eye(3), np.zeros((3, 1)), np.zeros(3)
    for j in range(horizon):
        s = np.eye(3)
        s[0, 1], s[1, 2] = vj[j] * dt, vj[j] * dt / wheelbase
        a, b = s @ a, s @ b + np.array([[0.0], [0.0], [dt]])
        g = s @ g + np.array([0.0, -vj[j] * kw[j] * dt, 0.0])
    z = a @ x0 + g
    z[1:] = np.arctan2(np.sin(z[1:]), np.cos(z[1:]))
    q = np.diag([1.0, 10.0, 0.0])
    return accel, -(b.T @ q @ z)[0] / ((b.T @ q @ b)[0, 0] + 1.0)


def test_closed_form_lqr_equals_the_matrix_products():
    rng = np.random.default_rng(3)
    t = np.arange(1, 9) * 0.5
    plans = np.stack([8 * t + rng.normal(0, 0.2, 8), 0.3 * t**2, 0.1 * t], -1)[None]
    ref = reference_states(plans)
    start = initial_state(np.array([0, 0, 0, 7.0, 0, 0.5, 0]), 1)
    states = simulate(ref, start)[0]
    v_prof, curv = fit_profiles(ref)
    dt = 0.1
    for k in (0, 7, 25, 35, 39):  # one step from the simulated state k, by hand
        s = states[k]
        accel, rate = _reference_lqr_step(ref[0], s, v_prof[0], curv[0], k)
        acc = s[AX] + dt / (dt + 0.2) * (accel - s[AX])
        steer = s[7] + dt / (dt + 0.05) * (dt * rate)
        assert np.isclose(states[k + 1, AX], acc, atol=1e-9)
        assert np.isclose(states[k + 1, 7], np.clip(steer, -np.pi / 3, np.pi / 3), atol=1e-9)
        assert np.isclose(states[k + 1, 0], s[0] + dt * s[3] * np.cos(s[2]), atol=1e-9)
        assert np.isclose(states[k + 1, 3], s[3] + dt * acc, atol=1e-9)


def test_lqr_tracks_a_straight_reference():
    ref = reference_states(straight_plan(10.0)[None])
    st = simulate(ref, initial_state(np.array([0, 0, 0, 10.0, 0, 0, 0]), 1))[0]
    assert st.shape == (41, N_STATE)
    assert np.abs(st[:, 0] - ref[0, :, 0]).max() < 0.05
    assert np.abs(st[:, 1]).max() < 1e-9 and np.abs(st[:, 3] - 10.0).max() < 0.01


def test_lqr_tracks_a_curved_reference():
    kappa, v = 0.03, 8.0  # 33 m radius at 8 m/s
    s = np.arange(1, 9) * 0.5 * v
    plan = np.stack([np.sin(kappa * s) / kappa, (1 - np.cos(kappa * s)) / kappa, kappa * s], -1)
    ref = reference_states(plan[None])
    st = simulate(ref, initial_state(np.array([0, 0, 0, v, 0, 0, 0]), 1))[0]
    dx, dy, h = st[:, 0] - ref[0, :, 0], st[:, 1] - ref[0, :, 1], ref[0, :, 2]
    lat = -dx * np.sin(h) + dy * np.cos(h)
    lon = dx * np.cos(h) + dy * np.sin(h)
    # starting with the wheels straight on a 0.09 rad curve, NAVSIM's LQR drifts ~0.8 m
    # wide within 1.5 s, then recovers; it lags < 0.5 m along the path
    assert np.abs(lat).max() < 1.0 and abs(lat[-1]) < 0.35 and np.abs(lon).max() < 0.5
    assert np.abs(lat[-10:]).mean() < 0.5 * np.abs(lat[10:20]).mean()
    assert np.abs(st[:, 7]).max() < 0.2 and np.abs(st[:, 3] - v).max() < 0.3
    assert np.isclose(st[-1, HEADING], kappa * 4 * v, atol=0.05)


def test_stopping_reference_holds_the_ego():
    ref = reference_states(np.zeros((1, 8, 3)))
    st = simulate(ref, initial_state(np.array([0, 0, 0, 0.1, 0, 0, 0]), 1))[0]
    # below 0.2 m/s the stopping P controller (gain 0.5, through the 0.2 s lag) takes over
    assert (np.diff(st[:, 3]) < 0).all() and st[-1, 3] < 0.02 and st[-1, 0] < 0.25
    assert np.abs(st[:, 1]).max() == 0.0 and np.abs(st[:, 7]).max() == 0.0


# --- map index -----------------------------------------------------------------------------
def test_polygon_index_equals_shapely_contains_xy():
    rng = np.random.default_rng(0)
    polys = [
        shapely.Polygon(np.c_[np.cos(a), np.sin(a)] * r + c)
        for a, r, c in (
            (np.linspace(0, 2 * np.pi, 40, endpoint=False), 12.0, (10, 0)),
            (np.linspace(0, 2 * np.pi, 7, endpoint=False), 30.0, (40, 20)),
        )
    ]
    polys += [
        shapely.box(-30, -1.75, 120, 1.75),
        shapely.box(-5, -5, 5, 5).difference(shapely.box(-1, -1, 1, 1)),  # a hole
        shapely.MultiPolygon([shapely.box(50, -30, 60, -20), shapely.box(62, -30, 70, -20)]),
        shapely.box(200, 0, 210, 10),  # off the grid window
    ]
    polys = np.array(polys, dtype=object)
    idx = PolygonIndex(polys)
    pts = rng.uniform(-40, 220, (4000, 2))
    verts = shapely.get_coordinates(polys)
    pts = np.concatenate([pts, verts, (verts[:-1] + verts[1:]) / 2, [[0.25, 0.0], [1.0, 0.0]]])
    want = shapely.contains_xy(polys[:, None], pts[None, :, 0], pts[None, :, 1])
    assert want.sum() > 200
    for grid in (False, False, True, True):  # direct queries first, then the grid
        pt, pl = idx.query(pts[:, 0], pts[:, 1])
        assert idx.grid_built == grid
        got = np.zeros((len(polys), len(pts)), bool)
        got[pl, pt] = True
        assert (got == want).all()


# --- metrics, worked examples ------------------------------------------------------------------
def test_plan_off_the_road_has_dac_zero():
    cache = road_cache()
    plan = straight_plan(10.0)
    plan[:, 1] = -1.5 * np.arange(1, 11) * 0.5  # drifts 6 m right in 4 s, past the shoulder
    r = score_plans(cache, np.stack([straight_plan(10.0), plan]))
    assert r.dac.tolist() == [1.0, 0.0] and r.pdms[1] == 0.0 and r.ep[1] == 0.0
    assert r.pdms[0] == 1.0


def test_rear_end_into_a_stopped_car_is_at_fault():
    car = track(25.0, 0.0)  # stopped, rear at 22.75 m; the ego front reaches it near 1.9 s
    r = score_plans(road_cache(tracks=[(*car, VEHICLE)]), straight_plan(10.0)[None])
    assert r.nc[0] == 0.0 and r.pdms[0] == 0.0
    cone = track(25.0, 0.0, length=0.5, width=0.5)
    r = score_plans(road_cache(tracks=[(*cone, CONE)]), straight_plan(10.0)[None])
    assert r.nc[0] == 0.5 and 0.0 < r.pdms[0] <= 0.5


def test_lateral_contact_in_one_lane_is_not_at_fault():
    # a car alongside (same speed) drifts right from the left lane into the ego's side at
    # ~1.5 s; its centre is ~56 degrees off the ego heading, the ego's front edge is clear
    car = track(1.461, 2.9, width=2.0, vx=10.0, vy=-0.5)
    r = score_plans(road_cache(tracks=[(*car, VEHICLE)]), straight_plan(10.0)[None])
    assert r.nc[0] == 1.0
    # TTC does flag it: the ego projected 0.9 s ahead meets the car's box 0.9 s later, and
    # that centroid, seen from the ego's current rear axle, is ~13 degrees off: "ahead"
    assert r.ttc[0] == 0.0 and r.pdms[0] == pytest.approx((5 + 0 + 2) / 12)
    # the same contact while the ego straddles two lanes is at fault
    straddling = road_cache(tracks=[(*car, VEHICLE)])
    straddling.map_polygons = np.array(
        [shapely.affinity.translate(p, 0.0, -1.0) for p in straddling.map_polygons]
    )
    r = score_plans(straddling, straight_plan(10.0)[None])
    assert r.nc[0] == 0.0 and r.pdms[0] == 0.0


def test_ttc_fires_for_an_object_ahead_within_0_9_s():
    # ego at 10 m/s brakes for a pedestrian standing 8.2 m ahead of its bumper, seen for
    # the first second only: at t = 0 the ego projected 0.9 s ahead (9 m) overlaps it, but
    # the braking ego is still short of it when it is last seen
    steps = np.arange(11)
    ped = track(4.049 + 8.2 + 0.3, 0.0, length=0.6, width=0.6, steps=steps)
    cache = road_cache(speed=10.0, tracks=[(*ped, PEDESTRIAN)])
    stop = np.zeros((1, 10, 3))
    states = simulate_plans(cache, stop)[0]
    assert states[10, 0] + 4.049 < 4.049 + 8.2  # front still short of the pedestrian at 1 s
    r = score_plans(cache, stop)
    assert r.nc[0] == 1.0 and r.ttc[0] == 0.0
    # the same pedestrian in the next lane, beside the path: no TTC infraction
    beside = track(4.049 + 8.2 + 0.3, 3.5, length=0.6, width=0.6, steps=steps)
    r = score_plans(road_cache(speed=10.0, tracks=[(*beside, PEDESTRIAN)]), stop)
    assert r.ttc[0] == 1.0


def test_progress_normalised_by_pdm_closed_and_the_5_m_rule():
    plan = straight_plan(1.0)[None]  # ~4 m in 4 s
    r = score_plans(road_cache(speed=1.0, pdm_progress=3.0), plan)
    assert r.progress[0] < 5.0 and r.ep[0] == 1.0 and r.pdms[0] == 1.0
    r = score_plans(road_cache(speed=10.0, pdm_progress=80.0), straight_plan(10.0)[None])
    assert np.isclose(r.ep[0], r.progress[0] / 80.0) and np.isclose(r.progress[0], 40.0, atol=0.1)
    assert np.isclose(r.pdms[0], (5 * r.ep[0] + 5 + 2) / 12)
    # a plan better than PDM-Closed normalises by itself
    r = score_plans(road_cache(speed=10.0, pdm_progress=20.0), straight_plan(10.0)[None])
    assert r.ep[0] == 1.0


def test_aggregation_on_hand_numbers():
    assert M.aggregate(1.0, 1.0, 0.5, 0.0, 1.0, 0.0) == pytest.approx((2.5 + 0 + 2) / 12)
    assert M.aggregate(0.5, 1.0, 1.0, 1.0, 0.0, 1.0) == pytest.approx(0.5 * 10 / 12)
    assert M.aggregate(1.0, 0.0, 1.0, 1.0, 1.0, 1.0) == 0.0
    assert M.normalized_progress(np.array([3.0, 8.0]), np.array([1.0, 0.0]), 4.0).tolist() == [
        1.0, 0.0,
    ]  # fmt: skip


def _states_with(ax: np.ndarray) -> np.ndarray:
    st = np.zeros((1, 41, N_STATE))
    st[0, :, AX] = ax
    return st


def test_comfort_fails_on_a_jerk_above_the_bound():
    t = np.arange(41) * 0.1
    # ax = 2.3 - k (t - 2)^2 stays inside (-4.05, 2.40); savgol (order 2) keeps a quadratic,
    # so the jerk is exactly -2 k (t - 2): |jerk| peaks at 4 k at both ends
    ok = M.comfort_checks(_states_with(2.3 - 0.5 * (t - 2) ** 2))[0]
    bad = M.comfort_checks(_states_with(2.3 - 1.5 * (t - 2) ** 2))[0]
    assert ok.all()  # 2 m/s^3
    checks = dict(zip(M.COMFORT_CHECKS, bad, strict=True))
    assert not checks["lon_jerk"] and checks["lon_acc"]  # 6 > 4.13 m/s^3
    assert M.comfort(_states_with(2.3 - 1.5 * (t - 2) ** 2))[0] == 0.0


def test_comfort_bounds_are_strict():
    ok = M.comfort_checks(_states_with(np.full(41, 2.39)))[0]
    at = M.comfort_checks(_states_with(np.full(41, 2.40)))[0]
    assert ok[0] and not at[0]


@pytest.mark.parametrize(
    ("window", "order", "deriv"), [(41, 2, 0), (8, 2, 0), (41, 2, 1), (5, 2, 1), (5, 3, 2)]
)
def test_savgol_operator_equals_scipy(window, order, deriv):
    x = np.random.default_rng(window + deriv).normal(size=(6, 41))
    w = M.savgol_operator(41, window, order, deriv, 0.1)
    want = savgol_filter(x, window, order, deriv=deriv, delta=0.1, axis=-1, mode="interp")
    np.testing.assert_allclose(x @ w, want, atol=1e-10, rtol=0)


def test_driving_direction_counts_oncoming_distance():
    # with only the left lane on the route the ego lane counts as oncoming traffic
    slow, fast = road_cache(speed=1.0), road_cache(speed=10.0)
    slow.route_lane_ids = fast.route_lane_ids = ["left"]
    r_slow = score_plans(slow, straight_plan(1.0)[None])  # 1 m within any second: 1
    r_fast = score_plans(fast, straight_plan(10.0)[None])  # 10 m within a second: 0
    r_mid = score_plans(road_cache(speed=3.0), straight_plan(3.0)[None])
    assert r_slow.ddc[0] == 1.0 and r_fast.ddc[0] == 0.0 and r_mid.ddc[0] == 1.0
    mid = road_cache(speed=3.0)
    mid.route_lane_ids = ["left"]
    assert score_plans(mid, straight_plan(3.0)[None]).ddc[0] == 0.5  # 3 m: between 2 and 6
    assert r_fast.pdms[0] == 1.0  # DDC has weight 0


# --- batching and bad input --------------------------------------------------------------------
def test_batched_scores_equal_one_by_one():
    lead = track(30.0, 0.0, vx=6.0)
    cone = track(18.0, -2.2, length=0.5, width=0.5)
    ped = track(40.0, -4.0, length=0.6, width=0.6, vy=1.2)
    cache = road_cache(tracks=[(*lead, VEHICLE), (*cone, CONE), (*ped, PEDESTRIAN)],
                       pdm_progress=30.0)  # fmt: skip
    rng = np.random.default_rng(1)
    base = straight_plan(9.0)
    plans = base[None] + rng.normal(0, 0.6, (8, 10, 3)) * np.array([2.0, 0.5, 0.03])
    plans[0] = straight_plan(11.0)
    batch = score_plans(cache, plans)
    for i in range(len(plans)):
        one = score_plans(road_cache(tracks=[(*lead, VEHICLE), (*cone, CONE),
                                             (*ped, PEDESTRIAN)], pdm_progress=30.0),
                          plans[i : i + 1])  # fmt: skip
        a, b = batch.row(i), one.row(0)
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], abs=1e-9) for k in a)
    assert (batch.pdms >= 0).all() and (batch.pdms <= 1).all() and batch.nc.min() < 1


def test_non_finite_plan_gives_nan_and_bad_shape_is_an_error():
    plans = np.stack([straight_plan(10.0), straight_plan(10.0)])
    plans[1, 3, 0] = np.nan
    r = score_plans(road_cache(), plans)
    assert r.pdms[0] == 1.0 and np.isnan(r.pdms[1]) and np.isnan(r.nc[1])
    with pytest.raises(ValueError, match=r"\(N, >= 8, 3\)"):
        score_plans(road_cache(), plans[:, :6])
    # 8 poses (4 s) are enough: NAVSIM scores 4 s
    assert score_plans(road_cache(), plans[:1, :8]).pdms[0] == 1.0
