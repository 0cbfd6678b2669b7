import numpy as np
import pytest

from autovla.data.meta_actions import meta_action


def straight(speeds):
    """Future positions along x with per-step speeds (m/s) at 0.5 s."""
    x = np.cumsum(np.asarray(speeds) * 0.5)
    return np.stack([x, np.zeros_like(x), np.zeros_like(x)], 1)


def with_lateral(fut, y_final, max_abs=None):
    f = fut.copy()
    f[:, 1] = np.linspace(0, y_final, len(f))
    return f


@pytest.mark.parametrize(
    "v0, speeds, expected",
    [
        (0.1, [0.1] * 10, "STOP"),
        (
            5.0,
            [4, 3, 2, 1, 0.5, 0.2, 0.1, 0.0, 0.0, 0.1],
            "move forward with a deceleration to zero",
        ),
        (5.0, [5.0] * 10, "move forward with a constant speed"),
        (5.0, [5.5, 6, 7, 8, 9, 10, 10.5, 11, 11, 11], "move forward with a quick acceleration"),
        (5.0, [5.5, 6, 6.5, 7, 7, 7, 7, 7, 7, 7], "move forward with an acceleration"),
        (8.0, [7, 6, 5, 4, 3.5, 3.5, 3.5, 3.5, 3.5, 3.5], "move forward with a quick deceleration"),
        (8.0, [7.5, 7, 6.5, 6, 6, 6, 6, 6, 6, 6], "move forward with a deceleration"),
    ],
)
def test_longitudinal_labels(v0, speeds, expected):
    assert meta_action(straight(speeds), v0) == expected


def test_lateral_labels():
    base = straight([5.0] * 10)
    assert meta_action(with_lateral(base, 6.0), 5.0) == "turn left with a constant speed"
    assert meta_action(with_lateral(base, -6.0), 5.0) == "turn right with a constant speed"
    assert meta_action(with_lateral(base, 3.0), 5.0) == "change lane to left with a constant speed"
    assert (
        meta_action(with_lateral(base, -3.0), 5.0) == "change lane to right with a constant speed"
    )
    # Below 2 m at every pose: no lateral manoeuvre, even if the end is off-centre.
    assert meta_action(with_lateral(base, 1.9), 5.0) == "move forward with a constant speed"
