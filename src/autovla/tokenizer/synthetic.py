"""Seeded kinematic bicycle-model trajectories: fixtures for tests and benchmarks when no
driving data are at hand (speeds 0-20 m/s, smooth acceleration and curvature, lateral
acceleration <= 2.5 m/s^2)."""

from __future__ import annotations

import numpy as np


def bicycle_trajectories(
    n: int,
    steps: int = 10,
    seed: int = 0,
    max_speed: float = 20.0,
    dt: float = 0.1,
) -> np.ndarray:
    """(n, steps, 3) ego-frame poses at 0.5 s steps, starting after the origin."""
    rng = np.random.default_rng(seed)
    sub = round(0.5 / dt)
    v = rng.uniform(0.0, max_speed, n)
    v[rng.random(n) < 0.05] = 0.0  # some standing starts
    accel = rng.normal(0.0, 1.0, (n, steps))
    curv = rng.normal(0.0, 0.02, (n, 1)) + np.cumsum(rng.normal(0.0, 0.004, (n, steps)), 1)
    curv = np.clip(curv, -0.2, 0.2)
    x, y, h = np.zeros(n), np.zeros(n), np.zeros(n)
    out = np.empty((n, steps, 3))
    for t in range(steps):
        for _ in range(sub):
            v = np.clip(v + accel[:, t] * dt, 0.0, max_speed * 1.2)
            # keep lateral acceleration v^2 * k within a comfortable 2.5 m/s^2
            k = np.clip(curv[:, t], -2.5 / np.maximum(v, 1e-3) ** 2, 2.5 / np.maximum(v, 1e-3) ** 2)
            h = h + v * k * dt
            x = x + v * np.cos(h) * dt
            y = y + v * np.sin(h) * dt
        out[:, t] = np.stack([x, y, np.mod(h + np.pi, 2 * np.pi) - np.pi], -1)
    return out
