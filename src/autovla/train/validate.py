"""Validation during SFT: decode plans with the Planner and compare them with the truth.

Metrics: L2 (m) at 1/2/3 s in the ST-P3 convention (mean over the 0.5 s steps up to t) and
their average, for the model and for a constant-velocity baseline on the same samples; the
share of slow thinking on complex and on straightforward samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autovla.data.schema import FUTURE_STEPS, STEP_SECONDS, DrivingSample

HORIZONS_S = (1.0, 2.0, 3.0)


def l2_metrics(pred: np.ndarray, truth: np.ndarray, prefix: str = "l2") -> dict[str, float]:
    """pred, truth (N, T, >=2) at 0.5 s steps -> {prefix_1s, prefix_2s, prefix_3s, prefix_avg}."""
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if pred.shape[:2] != truth.shape[:2]:
        raise ValueError(f"shape mismatch: {pred.shape} vs {truth.shape}")
    err = np.linalg.norm(pred[..., :2] - truth[..., :2], axis=-1)  # (N, T)
    out = {}
    for h in HORIZONS_S:
        steps = round(h / STEP_SECONDS)
        out[f"{prefix}_{int(h)}s"] = float(err[:, :steps].mean())
    out[f"{prefix}_avg"] = float(np.mean([out[f"{prefix}_{int(h)}s"] for h in HORIZONS_S]))
    return out


def constant_velocity(samples: Sequence[DrivingSample]) -> np.ndarray:
    """(N, 10, 3): keep the current velocity vector and heading for 5 s."""
    t = STEP_SECONDS * np.arange(1, FUTURE_STEPS + 1)
    out = np.zeros((len(samples), FUTURE_STEPS, 3))
    for i, s in enumerate(samples):
        out[i, :, 0] = s.ego.vx * t
        out[i, :, 1] = s.ego.vy * t
    return out


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
