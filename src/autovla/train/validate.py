"""Validation during SFT: decode plans with the Planner and compare them with the truth.

Metrics: L2 (m) at 1/2/3 s in the ST-P3 convention (mean over the 0.5 s steps up to t) and
their average, for the model and for the constant-velocity baseline on the same samples; the
share of slow thinking on complex and on straightforward samples. The L2 and the baseline are
evaluation's own (`autovla.eval`), so validation and `autovla eval open-loop` cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autovla.data.schema import DrivingSample
from autovla.eval.baselines import constant_velocity_trajectory
from autovla.eval.metrics import HORIZONS_S, at_horizons, l2_per_step


def l2_metrics(pred: np.ndarray, truth: np.ndarray, prefix: str = "l2") -> dict[str, float]:
    """pred, truth (N, T, >=2) at 0.5 s steps -> {prefix_1s, prefix_2s, prefix_3s, prefix_avg},
    means over samples in the ST-P3 convention: the same functions as `autovla eval`."""
    per_sample = at_horizons(l2_per_step(pred, truth), "stp3")
    out = {f"{prefix}_{t:g}s": float(v.mean()) for t, v in per_sample.items()}
    out[f"{prefix}_avg"] = float(np.mean([out[f"{prefix}_{t:g}s"] for t in HORIZONS_S]))
    return out


def constant_velocity(samples: Sequence[DrivingSample]) -> np.ndarray:
    """(N, 10, 3): evaluation's constant-velocity baseline for every sample."""
    return np.stack([constant_velocity_trajectory(s.ego.vx, s.ego.vy) for s in samples])


def slow_shares(modes: Sequence[str | None], complex_flags: Sequence[bool | None]) -> dict:
    """Share of 'slow' among complex and among straightforward samples (NaN when none)."""

    def share(want: bool) -> float:
        picked = [m == "slow" for m, c in zip(modes, complex_flags, strict=True) if c is want]
        return float(np.mean(picked)) if picked else float("nan")

    return {"slow_share_complex": share(True), "slow_share_straightforward": share(False)}


def run_validation(
    vla: Any,
    items: Sequence[Any],
    batch_size: int,
    variant: str,
    action_choice: str = "argmax",
) -> dict:
    """Plan every item (mode 'auto' for dual thinking, 'fast' for action-only) and score."""
    from autovla.model.planner import Planner

    planner = Planner(vla, system=variant, action_choice=action_choice)
    mode = "auto" if variant == "dual" else "fast"
    preds, modes = [], []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        results = planner.plan(
            [it.sample.without_answer() for it in chunk], [it.root for it in chunk], mode=mode
        )
        for r in results:
            preds.append(np.asarray(r.trajectory, dtype=np.float64))
            modes.append(r.mode)
    samples = [it.sample for it in items]
    truth = np.stack([s.future_array() for s in samples])
    out = l2_metrics(np.stack(preds), truth, "l2")
    out.update(l2_metrics(constant_velocity(samples), truth, "cv_l2"))
    out.update(slow_shares(modes, [s.complex for s in samples]))
    out["slow_share"] = float(np.mean([m == "slow" for m in modes]))
    out["samples"] = len(items)
    return out
