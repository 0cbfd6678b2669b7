"""SE(2) geometry: the only copy in the project.

Conventions: x forward, y left, heading counter-clockwise in radians, wrapped to (-pi, pi].
Poses are arrays whose last axis is (x, y, heading); every function broadcasts over leading
axes and works on numpy arrays (float64 unless given otherwise).
"""

from __future__ import annotations

from typing import Union

import numpy as np

# Union, not `|`: this line runs at import, and the simulator clients (autovla.integrations)
# import this module in CARLA's Python, which may be 3.8.
ArrayLike = Union[np.ndarray, list, tuple]  # noqa: UP007


def wrap_angle(angle: ArrayLike) -> np.ndarray:
    """Wrap angles to (-pi, pi]."""
    a = np.asarray(angle, dtype=np.float64)
    wrapped = np.mod(a + np.pi, 2.0 * np.pi) - np.pi  # in [-pi, pi)
    return np.where(wrapped <= -np.pi, wrapped + 2.0 * np.pi, wrapped)


def rotation(theta: ArrayLike) -> np.ndarray:
    """Rotation matrices of shape (..., 2, 2)."""
    t = np.asarray(theta, dtype=np.float64)
    c, s = np.cos(t), np.sin(t)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def to_local(poses: ArrayLike, origin: ArrayLike) -> np.ndarray:
    """Express global poses (..., 3) or points (..., 2) in the frame of `origin` (..., 3).

    `origin` broadcasts against the leading axes of `poses` once a trailing point axis is
    accounted for: for poses (N, T, 3) pass origins (N, 1, 3).
    """
    p = np.asarray(poses, dtype=np.float64)
    o = np.asarray(origin, dtype=np.float64)
    dx = p[..., 0] - o[..., 0]
    dy = p[..., 1] - o[..., 1]
    c, s = np.cos(o[..., 2]), np.sin(o[..., 2])
    x = c * dx + s * dy
    y = -s * dx + c * dy
    if p.shape[-1] == 2:
        return np.stack([x, y], -1)
    return np.stack([x, y, wrap_angle(p[..., 2] - o[..., 2])], -1)


def to_global(poses: ArrayLike, origin: ArrayLike) -> np.ndarray:
    """Inverse of :func:`to_local`: local poses (..., 3) or points (..., 2) to global."""
    p = np.asarray(poses, dtype=np.float64)
    o = np.asarray(origin, dtype=np.float64)
    c, s = np.cos(o[..., 2]), np.sin(o[..., 2])
    x = o[..., 0] + c * p[..., 0] - s * p[..., 1]
    y = o[..., 1] + s * p[..., 0] + c * p[..., 1]
    if p.shape[-1] == 2:
        return np.stack([x, y], -1)
    return np.stack([x, y, wrap_angle(p[..., 2] + o[..., 2])], -1)


def compose(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Pose `b` given in the frame of pose `a`, expressed in a's parent frame."""
    return to_global(b, a)


def yaw_from_quaternion(q: ArrayLike) -> np.ndarray:
    """Yaw of quaternions (..., 4) ordered (w, x, y, z)."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def headings_from_path(
    xy: ArrayLike, initial: float = 0.0, min_step: float = 1e-3, central: bool = False
) -> np.ndarray:
    """Heading at each point of a path (T, 2) from the direction of travel.

    The path starts at the origin: the point before the first is (0, 0). By default the
    heading at point t is the direction from t-1 to t (a backward difference: on a curve it
    lags the tangent by half a step). With `central`, it is the direction from t-1 to t+1
    where a next point exists (the chord of two points symmetric about t is parallel to the
    tangent on a circle), and the backward difference at the last point. Before any motion
    the heading is `initial`; where the ego barely moves (< min_step metres) the previous
    heading is kept, so a stopped vehicle does not spin.
    """
    p = np.asarray(xy, dtype=np.float64)
    prev = np.concatenate([np.zeros((1, 2)), p[:-1]], 0)
    nxt = np.concatenate([p[1:], p[-1:]], 0) if central and len(p) else p
    d = nxt - prev
    out = np.empty(len(p))
    h = float(initial)
    for t in range(len(p)):
        if np.hypot(d[t, 0], d[t, 1]) >= min_step:
            h = float(np.arctan2(d[t, 1], d[t, 0]))
        out[t] = h
    return out


def box_corners(
    poses: ArrayLike, length: ArrayLike, width: ArrayLike, rear_overhang: ArrayLike | None = None
) -> np.ndarray:
    """Corners (..., 4, 2) of oriented boxes, counter-clockwise from front-left.

    Order: front-left, rear-left, rear-right, front-right. With `rear_overhang` the pose is a
    reference point that far ahead of the rear edge (e.g. the rear axle); otherwise the centre.
    """
    p = np.asarray(poses, dtype=np.float64)
    length = np.asarray(length, dtype=np.float64)
    half_w = np.asarray(width, dtype=np.float64) / 2.0
    if rear_overhang is None:
        front, back = length / 2.0, -length / 2.0
    else:
        back = -np.asarray(rear_overhang, dtype=np.float64)
        front = length + back
    front, back, half_w = np.broadcast_arrays(front, back, half_w)
    fx = np.stack([front, back, back, front], -1)
    fy = np.stack([half_w, half_w, -half_w, -half_w], -1)
    local = np.stack([fx, fy], -1)  # (..., 4, 2)
    c, s = np.cos(p[..., 2])[..., None], np.sin(p[..., 2])[..., None]
    x = p[..., 0][..., None] + c * local[..., 0] - s * local[..., 1]
    y = p[..., 1][..., None] + s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y], -1)


def polygons_overlap(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Separating-axis test for convex polygons a (..., Na, 2) and b (..., Nb, 2).

    Returns a boolean array over the broadcast leading axes: True where they intersect
    (touching counts as overlap).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    overlap = np.ones(lead, dtype=bool)
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=-2) - poly
        normals = np.stack([-edges[..., 1], edges[..., 0]], -1)  # (..., N, 2)
        pa = np.einsum("...kd,...nd->...nk", a, normals)  # projections (..., N, Na)
        pb = np.einsum("...kd,...nd->...nk", b, normals)
        sep = (pa.max(-1) < pb.min(-1)) | (pb.max(-1) < pa.min(-1))
        overlap &= ~sep.any(-1)
    return overlap


def boxes_overlap(
    pose_a: ArrayLike, size_a: ArrayLike, pose_b: ArrayLike, size_b: ArrayLike
) -> np.ndarray:
    """Overlap of centred oriented boxes; sizes are (..., 2) = (length, width)."""
    sa = np.asarray(size_a, dtype=np.float64)
    sb = np.asarray(size_b, dtype=np.float64)
    ca = box_corners(pose_a, sa[..., 0], sa[..., 1])
    cb = box_corners(pose_b, sb[..., 0], sb[..., 1])
    return polygons_overlap(ca, cb)


def points_in_polygon(points: ArrayLike, polygon: ArrayLike) -> np.ndarray:
    """Even-odd rule: which points (..., 2) lie inside a simple polygon (N, 2)."""
    pts = np.asarray(points, dtype=np.float64)
    poly = np.asarray(polygon, dtype=np.float64)
    x, y = pts[..., 0][..., None], pts[..., 1][..., None]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < x_at)).sum(-1) % 2 == 1


def path_length(xy: ArrayLike) -> np.ndarray:
    """Length of paths (..., T, 2) including the segment from the origin to the first point."""
    p = np.asarray(xy, dtype=np.float64)[..., :2]
    start = np.zeros_like(p[..., :1, :])
    d = np.diff(np.concatenate([start, p], -2), axis=-2)
    return np.hypot(d[..., 0], d[..., 1]).sum(-1)
