import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from autovla import geometry as g

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
angle = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False)


@given(angle)
def test_wrap_lands_in_half_open_interval(a):
    w = float(g.wrap_angle(a))
    assert -np.pi < w <= np.pi
    assert np.isclose(np.cos(w), np.cos(a), atol=1e-9) and np.isclose(
        np.sin(w), np.sin(a), atol=1e-9
    )


def test_wrap_edges():
    assert g.wrap_angle(np.pi) == np.pi
    assert g.wrap_angle(-np.pi) == np.pi
    assert np.isclose(g.wrap_angle(3 * np.pi / 2), -np.pi / 2)


@settings(max_examples=60)
@given(finite, finite, angle, finite, finite, angle)
def test_local_global_are_inverse(x, y, h, ox, oy, oh):
    pose = np.array([x, y, h])
    origin = np.array([ox, oy, oh])
    back = g.to_global(g.to_local(pose, origin), origin)
    assert np.allclose(back[:2], pose[:2], atol=1e-6)
    assert np.isclose(g.wrap_angle(back[2] - h), 0.0, atol=1e-9)
    again = g.to_local(g.to_global(pose, origin), origin)
    assert np.allclose(again[:2], pose[:2], atol=1e-6)


def test_batched_transform_matches_loop(rng):
    poses = rng.normal(size=(5, 7, 3))
    origins = rng.normal(size=(5, 1, 3))
    batched = g.to_local(poses, origins)
    for i in range(5):
        for t in range(7):
            assert np.allclose(batched[i, t], g.to_local(poses[i, t], origins[i, 0]))


def test_to_local_known_value():
    # A point 1 m north of an ego at (10, 0) facing north is 1 m straight ahead.
    assert np.allclose(g.to_local([10.0, 1.0], [10.0, 0.0, np.pi / 2]), [1.0, 0.0])


def test_box_corners_and_overlap():
    c = g.box_corners([0.0, 0.0, 0.0], 4.0, 2.0)
    assert np.allclose(c, [[2, 1], [-2, 1], [-2, -1], [2, -1]])
    rear = g.box_corners([0.0, 0.0, 0.0], 4.0, 2.0, rear_overhang=1.0)
    assert np.allclose(rear[:, 0], [3, -1, -1, 3])
    assert g.boxes_overlap([0, 0, 0], [4, 2], [3.9, 0, 0.3], [4, 2])
    assert not g.boxes_overlap([0, 0, 0], [4, 2], [4.5, 0, 0], [4, 2])
    # Rotated boxes whose axis-aligned hulls overlap but the boxes do not.
    assert not g.boxes_overlap([0, 0, np.pi / 4], [4, 0.5], [1.6, -1.6, np.pi / 4], [4, 0.5])


def test_overlap_is_batched():
    a = g.box_corners(np.array([[0, 0, 0], [0, 0, 0]]), 4.0, 2.0)
    b = g.box_corners(np.array([[1, 0, 0], [10, 0, 0]]), 4.0, 2.0)
    assert g.polygons_overlap(a, b).tolist() == [True, False]


def test_points_in_polygon():
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2]])
    assert g.points_in_polygon([[1, 1], [3, 1], [-0.1, 0.5]], square).tolist() == [
        True,
        False,
        False,
    ]


def test_yaw_from_quaternion():
    h = 0.7
    q = [np.cos(h / 2), 0.0, 0.0, np.sin(h / 2)]
    assert np.isclose(g.yaw_from_quaternion(q), h)


def test_headings_from_path_keeps_heading_when_stopped():
    xy = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    h = g.headings_from_path(xy)
    assert np.allclose(h, [0.0, 0.0, np.pi / 2])


def test_path_length():
    assert np.isclose(g.path_length([[3.0, 4.0], [3.0, 5.0]]), 6.0)
