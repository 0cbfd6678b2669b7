"""Shared bits of the converter tests: the ego arc and tiny JPEGs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

R = 50.0  # arc radius (m), left turn
V = 5.0  # speed (m/s)
W = V / R  # yaw rate (rad/s)
H0 = 0.7  # heading at t = 0 (rad): a non-zero global heading
CENTRE = np.array([1000.0, -2000.0])


def arc_pose(t: float) -> np.ndarray:
    """Global (x, y, heading) of the ego at time t on the known arc."""
    h = H0 + W * t
    return np.array([CENTRE[0] + R * np.sin(h), CENTRE[1] - R * np.cos(h), h])


def expected_local(dt: np.ndarray) -> np.ndarray:
    """Hand-computed ego-frame poses dt seconds from now on the same arc."""
    a = W * np.asarray(dt, dtype=np.float64)
    return np.stack([R * np.sin(a), R * (1.0 - np.cos(a)), a], -1)


def quat(yaw: float) -> list[float]:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def jpeg_bytes(w: int = 16, h: int = 8, value: int = 100) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (value, 50, 200)).save(buf, format="JPEG")
    return buf.getvalue()
