"""Plans at 0.5 s to reference states at 0.1 s, as NAVSIM's `pdm_score` samples them.

The plan's poses are stamped 0.5, 1.0, ... s and prefixed with the current pose (the origin
of the ego frame); x and y are interpolated linearly in time, the heading is unwrapped along
the sequence, interpolated linearly, then wrapped (docs/scoring.md, step 1).
"""

from __future__ import annotations

import numpy as np

from autovla.geometry import wrap_angle

DT = 0.1  # s between simulated states
PLAN_DT = 0.5  # s between plan poses
SCORED_POSES = 8  # NAVSIM scores 4 s of a plan
RATIO = round(PLAN_DT / DT)


def reference_states(plans: np.ndarray, poses: int = SCORED_POSES) -> np.ndarray:
    """Plans (N, T >= poses, 3) in the ego frame -> states (N, poses * 5 + 1, 3) at 0.1 s.

    State 0 is the current pose (0, 0, 0); state 5 j is plan pose j - 1.
    """
    plans = np.asarray(plans, dtype=np.float64)
    if plans.ndim != 3 or plans.shape[2] != 3 or plans.shape[1] < poses:
        raise ValueError(f"plans must have shape (N, >= {poses}, 3), got {plans.shape}")
    n = len(plans)
    full = np.concatenate([np.zeros((n, 1, 3)), plans[:, :poses]], 1)
    full[..., 2] = np.unwrap(full[..., 2], axis=1)
    # integer time indices: state k lies between nodes k // 5 and k // 5 + 1
    k = np.arange(poses * RATIO + 1)
    j = np.minimum(k // RATIO, poses - 1)
    f = ((k - j * RATIO) / RATIO)[None, :, None]
    out = full[:, j] * (1.0 - f) + full[:, j + 1] * f
    out[..., 2] = wrap_angle(out[..., 2])
    return out


def plan_poses(states: np.ndarray, poses: int = 10) -> np.ndarray:
    """States (..., T, 3) at 0.1 s from t = 0 -> the poses at 0.5, 1.0, ... s (..., poses, 3)."""
    states = np.asarray(states, dtype=np.float64)
    need = poses * RATIO + 1
    if states.shape[-2] < need:
        raise ValueError(f"need {need} states at 0.1 s for {poses} poses, got {states.shape[-2]}")
    return states[..., RATIO:need:RATIO, :].copy()
