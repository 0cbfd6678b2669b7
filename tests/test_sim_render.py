"""Renderer: projection of known points, occlusion, near-plane clipping, BEV."""

from __future__ import annotations

import numpy as np
import pytest

from autovla.sim.map import build_road
from autovla.sim.render import (
    BoxItem,
    make_cameras,
    project_points,
    project_trajectory,
    render_camera,
    static_mesh,
    vehicle_item,
)


def test_known_points_project_to_expected_pixels():
    front, left = make_cameras(("front", "front_left"), (224, 112))
    fx = 112 / np.tan(np.radians(35))
    pts = np.array([[11.7, 0.0, 1.55], [11.7, 1.0, 1.55], [11.7, 0.0, 0.55]])
    uv, depth = project_points(pts, front.to_dict())  # the dataset.json form
    assert np.allclose(uv[0], [112, 56]) and np.allclose(depth, 10.0)
    assert np.allclose(uv[1], [112 - fx / 10, 56])  # left of centre
    assert np.allclose(uv[2], [112, 56 + fx / 10])  # below the horizon
    ang = np.radians(55)
    p = np.array([1.5 + 10 * np.cos(ang), 0.4 + 10 * np.sin(ang), 1.55])
    uv, depth = project_points(p, left)
    assert np.allclose(uv, [112, 56]) and np.isclose(depth, 10.0)
    _, behind = project_points(np.array([-5.0, 0.0, 1.0]), front)
    assert behind < 0
    plan = np.stack([np.arange(1, 11) * 5.0, np.zeros(10), np.zeros(10)], -1)
    uv, ok = project_trajectory(plan, front.to_dict())
    assert not ok[0] and ok[1:].all()  # 5 m ahead on the ground is below the image
    assert np.allclose(uv[:, 0], 112) and (np.diff(uv[:, 1]) < 0).all()
    _, ok = project_trajectory(-plan, front)
    assert not ok.any()


def test_near_vehicle_occludes_far_one_and_is_where_projected():
    (cam,) = make_cameras(("front",), (224, 112))
    mesh = static_mesh(build_road(2, 1, 3.5, 0.0))
    ego = np.array([0.0, -1.75, 0.0])  # rear axle, world frame, right lane
    red = vehicle_item((20.0, -1.75, 0.0), 4.5, 1.9, 1.5, (200, 30, 30), braking=False)
    truck = BoxItem(np.array([40.0, -1.75, 0.0]), 8.0, 2.4, 3.5, (30, 60, 200))
    img = np.asarray(render_camera(cam, ego, mesh, [truck, red]))
    # the red car's rear face (lower middle) in ego coordinates
    uv, _ = project_points(np.array([20.0 - 2.25, 0.0, 0.3]), cam)
    r, g, b = img[int(uv[1]), int(uv[0])]
    assert r > 120 and g < 60 and b < 60
    # the truck shows above the car (it is taller), not through it
    uv_top, _ = project_points(np.array([40.0 - 4.0, 0.0, 3.2]), cam)
    r, g, b = img[int(uv_top[1]), int(uv_top[0])]
    assert b > 100 and r < 60
    # brake lights are lit when braking
    lit = vehicle_item((20.0, -1.75, 0.0), 4.5, 1.9, 1.5, (30, 30, 30), braking=True)
    img2 = np.asarray(render_camera(cam, ego, mesh, [lit]))
    assert (img2[..., 0] > 230).sum() > (
        np.asarray(render_camera(cam, ego, mesh, [red]))[..., 0] > 230
    ).sum()


def test_objects_across_the_near_plane_are_clipped():
    cams = make_cameras(("front", "front_left", "front_right"), (112, 56))
    mesh = static_mesh(build_road(2, 2, 3.5, 1 / 200))
    beside = vehicle_item((1.0, 1.8, 0.1), 4.8, 1.9, 1.5, (230, 230, 230), braking=False)
    for cam in cams:
        img = render_camera(cam, np.array([0.0, -1.75, 0.0]), mesh, [beside], "dusk")
        assert img.size == (112, 56)
    left = np.asarray(render_camera(cams[1], np.array([0.0, -1.75, 0.0]), mesh, [beside]))
    background = {(140, 185, 235), (95, 140, 75), (85, 85, 90), (235, 235, 235), (230, 190, 40)}
    car = [tuple(p) not in background for p in left.reshape(-1, 3).tolist()]
    assert np.mean(car) > 0.2  # the car beside the ego fills much of the left view


def test_bad_camera_arguments():
    with pytest.raises(ValueError, match="valid: front"):
        make_cameras(("roof",), (224, 112))
    with pytest.raises(ValueError, match="28"):
        make_cameras(("front",), (20, 112))
