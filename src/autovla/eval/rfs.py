"""Waymo E2E Rater Feedback Score (RFS), docs/method.md section 9.

Each frame has up to 3 rated trajectories (score 0-10, positions at 4 Hz over 5 s). The
prediction is compared with each at 3 s and 5 s: its error is split into a longitudinal and a
lateral part along the rated trajectory's direction of travel there, and normalised by a
trust region (lateral half-width 1.0 m at 3 s, 1.8 m at 5 s; longitudinal 4x that), scaled by
the current speed. With d = max(|lon| / thr_lon, |lat| / thr_lat), a rated trajectory gives
rating * 0.1 ** max(d - 1, 0). Per timestep the best rated trajectory counts, and the frame's
score is the mean over the two timesteps. Then, once per inference as in the official
definition: unless some rated trajectory's trust region holds the prediction at both 3 s and
5 s (d <= 1 at both), the averaged score is floored at 4: max(4, mean). (Flooring each
timestep before averaging gives a different, higher score when only one timestep is outside.)

>>> import numpy as np
>>> from autovla.data.schema import Preference
>>> t = np.arange(1, 21) * 0.25
>>> pref = Preference(trajectories=[[(5 * s, 0.0) for s in t]], scores=[7.0], hz=4)
>>> rater_feedback_score(np.stack([np.arange(1, 11) * 2.5, np.zeros(10)], -1), pref, v0=5.0)
7.0
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from autovla.data.schema import STEP_SECONDS, Preference
from autovla.geometry import headings_from_path

TIMES = (3.0, 5.0)  # s
LAT_HALF_WIDTH = (1.0, 1.8)  # m at 3 s, 5 s
LON_FACTOR = 4.0  # longitudinal half-width = 4 x lateral
SPEED_LOW, SPEED_HIGH = 1.4, 11.0  # m/s: the trust region scale ramps from 0.5 to 1.0
DECAY = 0.1  # score factor per trust-region width outside
FLOOR = 4.0


def speed_scale(v0: float) -> float:
    """Trust-region scale for the current speed: clip(0.5 + 0.5 (v0 - 1.4) / 9.6, 0.5, 1)."""
    return float(np.clip(0.5 + 0.5 * (v0 - SPEED_LOW) / (SPEED_HIGH - SPEED_LOW), 0.5, 1.0))


def _point_at(xy: np.ndarray, hz: float, t: float) -> np.ndarray:
    """Linear interpolation of a path sampled at 1/hz, 2/hz, ... (origin at t = 0)."""
    times = np.concatenate([[0.0], np.arange(1, len(xy) + 1) / hz])
    pts = np.concatenate([np.zeros((1, 2)), xy], 0)
    if t > times[-1] + 1e-9:
        raise ValueError(f"path of {len(xy)} points at {hz} Hz ends before {t} s")
    return np.array([np.interp(t, times, pts[:, 0]), np.interp(t, times, pts[:, 1])])


def _direction_at(xy: np.ndarray, hz: float, t: float) -> float:
    """Direction of travel of the segment that ends at (or spans) time t."""
    heads = headings_from_path(xy)
    i = int(np.clip(np.ceil(t * hz - 1e-9) - 1, 0, len(xy) - 1))
    return float(heads[i])


def normalised_errors(pred: np.ndarray, rated: np.ndarray, hz: float, v0: float) -> np.ndarray:
    """d at each of TIMES for one rated trajectory; pred is given at 2 Hz (0.5 ... 5 s)."""
    scale = speed_scale(v0)
    out = []
    for t, lat_w in zip(TIMES, LAT_HALF_WIDTH, strict=True):
        err = _point_at(pred, 1.0 / STEP_SECONDS, t) - _point_at(rated, hz, t)
        h = _direction_at(rated, hz, t)
        lon = err[0] * np.cos(h) + err[1] * np.sin(h)
        lat = -err[0] * np.sin(h) + err[1] * np.cos(h)
        thr_lat = lat_w * scale
        out.append(max(abs(lon) / (LON_FACTOR * thr_lat), abs(lat) / thr_lat))
    return np.array(out)


def rater_feedback_score(pred_xy: np.ndarray, preference: Preference, v0: float) -> float:
    """RFS (0-10) of a prediction (T, 2+) at 2 Hz in the ego frame (0.5 ... 5 s)."""
    pred = np.asarray(pred_xy, dtype=np.float64)[:, :2]
    if not preference.trajectories:
        raise ValueError("preference has no rated trajectories")
    d = np.stack(
        [
            normalised_errors(pred, np.asarray(traj, np.float64).reshape(-1, 2), preference.hz, v0)
            for traj in preference.trajectories
        ]
    )  # (rated, times)
    ratings = np.asarray(preference.scores, np.float64)[:, None]
    per_traj = ratings * DECAY ** np.maximum(d - 1.0, 0.0)
    score = float(per_traj.max(axis=0).mean())
    fully_inside = bool(np.any(np.all(d <= 1.0, axis=1)))  # one rated trajectory, both times
    return score if fully_inside else max(FLOOR, score)


def rfs_summary(scores: Iterable[tuple[float, str | None]]) -> dict[str, float | int | dict]:
    """Mean RFS overall and per scenario cluster from (score, cluster) pairs."""
    by: dict[str, list[float]] = defaultdict(list)
    all_scores = []
    for s, cluster in scores:
        all_scores.append(s)
        if cluster:
            by[cluster].append(s)
    return {
        "rfs": float(np.mean(all_scores)) if all_scores else float("nan"),
        "count": len(all_scores),
        "per_cluster": {c: float(np.mean(v)) for c, v in sorted(by.items())},
    }
