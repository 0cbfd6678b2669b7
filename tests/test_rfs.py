"""Rater Feedback Score on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from autovla.data.schema import Preference
from autovla.eval.rfs import rater_feedback_score, rfs_summary, speed_scale

T4 = np.arange(1, 21) * 0.25  # rated: 4 Hz
T2 = np.arange(1, 11) * 0.5  # prediction: 2 Hz


def straight(speed: float, t: np.ndarray, dy: float = 0.0) -> np.ndarray:
    return np.stack([speed * t, np.full_like(t, dy)], -1)


def pref(*trajs_scores) -> Preference:
    return Preference(
        trajectories=[[tuple(p) for p in tr] for tr, _ in trajs_scores],
        scores=[s for _, s in trajs_scores],
        hz=4,
    )


def test_speed_scale() -> None:
    assert speed_scale(0.0) == 0.5 and speed_scale(1.4) == 0.5
    assert speed_scale(6.2) == pytest.approx(0.75)
    assert speed_scale(30.0) == 1.0


def test_inside_trust_region_equals_rating() -> None:
    p = pref((straight(10, T4), 8.0), (straight(10, T4, dy=3.5), 5.0))
    assert rater_feedback_score(straight(10, T2), p, v0=10.0) == pytest.approx(8.0)
    # 0.4 m lateral and 3 m longitudinal at v0 = 11 (scale 1): thresholds 1.0 / 4.0 m at 3 s
    pred = np.stack([10 * T2 + 3.0, np.full(10, 0.4)], -1)
    assert rater_feedback_score(pred, p, v0=11.0) == pytest.approx(8.0)
    # the prediction on the lower-rated lane gets that rating
    assert rater_feedback_score(straight(10, T2, dy=3.5), p, v0=10.0) == pytest.approx(5.0)


def test_far_outside_floors_at_4() -> None:
    p = pref((straight(10, T4), 9.0), (straight(8, T4), 6.0))
    assert rater_feedback_score(straight(10, T2, dy=100.0), p, v0=10.0) == 4.0
    assert rater_feedback_score(np.zeros((10, 2)), p, v0=10.0) == 4.0


def test_decay_just_outside() -> None:
    # v0 = 11: lateral widths 1.0 / 1.8 m. 1.2 x the width at both marks: d = 1.2
    pred = straight(10, T2)
    pred[5, 1] = 1.2 * 1.0  # 3 s
    pred[9, 1] = 1.2 * 1.8  # 5 s
    p = pref((straight(10, T4), 10.0))
    assert rater_feedback_score(pred, p, v0=11.0) == pytest.approx(10 * 0.1**0.2)
    # the same offsets against a rating-5 trajectory fall below 4: floored
    assert rater_feedback_score(pred, pref((straight(10, T4), 5.0)), v0=11.0) == 4.0


def test_lateral_is_along_the_rated_direction() -> None:
    # rated trajectory heading 90 deg (driving along +y): an x offset is lateral
    rated = np.stack([np.zeros(20), 10 * T4], -1)
    p = pref((rated, 7.0))
    pred = np.stack([np.full(10, 0.9), 10 * T2], -1)  # 0.9 m lateral: inside at v0 = 11
    assert rater_feedback_score(pred, p, v0=11.0) == pytest.approx(7.0)
    pred = np.stack([np.full(10, 0.9), 10 * T2], -1)  # at v0 = 0 widths halve: outside at 3 s
    assert rater_feedback_score(pred, p, v0=0.0) < 7.0


def test_summary() -> None:
    s = rfs_summary([(8.0, "a"), (6.0, "a"), (4.0, None)])
    assert s["rfs"] == pytest.approx(6.0) and s["per_cluster"] == {"a": 7.0} and s["count"] == 3
