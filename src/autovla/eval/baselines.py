"""The planner interface of evaluation and the built-in baselines.

A plan function takes samples and their dataset roots and returns one PlanOutput each. It
sees `sample.without_answer()` unless it declares `needs_answer = True` (only the oracle
baselines do: the expert and the quantised ground truth), so a planner cannot peek.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autovla.data.schema import FUTURE_STEPS, STEP_SECONDS, DrivingSample


@dataclass
class PlanOutput:
    """One plan: (10, 3) poses at 0.5 s in the ego frame, plus how it was made."""

    trajectory: np.ndarray
    mode: str | None = None  # "fast", "slow" or None (a baseline)
    reasoning: str | None = None
    latency: float = 0.0  # seconds for this sample
    candidates: np.ndarray | None = None  # (K, 10, 3) when K samples were drawn (best-of-K)
    num_tokens: int | None = None  # generated tokens, when a model made it
    extra: dict = field(default_factory=dict)
    # A model answering with text waypoints: `text_answer` is True and `parse_error` says why
    # the text did not parse (the trajectory is then standing still, and scored as such).
    text_answer: bool = False
    parse_error: str | None = None

    def __post_init__(self) -> None:
        self.trajectory = np.asarray(self.trajectory, dtype=np.float64)
        if self.trajectory.shape != (FUTURE_STEPS, 3):
            raise ValueError(f"plan must be ({FUTURE_STEPS}, 3), got {self.trajectory.shape}")


PlanFn = Callable[[list[DrivingSample], list[Path]], list[PlanOutput]]


def constant_velocity_trajectory(vx: float, vy: float, steps: int = FUTURE_STEPS) -> np.ndarray:
    """Keep the current velocity vector for `steps` steps; heading along it.

    The one constant-velocity baseline (SFT validation uses it too). The heading follows the
    displacement, atan2(vy, vx), because a car moves where it points: poses that slide
    sideways at heading 0 describe a crabbing car, which the PDM scorer's kinematic bicycle
    cannot follow and whose box it would place askew. Below 0.1 m/s the direction is noise,
    so the heading stays 0. (NAVSIM's own constant-velocity agent drives at |v| straight
    ahead instead; with the small lateral speeds of real logs the two barely differ.)
    """
    t = np.arange(1, steps + 1) * STEP_SECONDS
    heading = float(np.arctan2(vy, vx)) if np.hypot(vx, vy) > 0.1 else 0.0
    return np.stack([vx * t, vy * t, np.full_like(t, heading)], -1)


class ConstantVelocity:
    """The classic floor: drive on at today's velocity (reads only the ego state)."""

    name = "constant-velocity"
    needs_answer = False

    def __call__(self, samples: list[DrivingSample], roots: list[Path]) -> list[PlanOutput]:
        out = []
        for s in samples:
            t0 = time.perf_counter()
            traj = constant_velocity_trajectory(s.ego.vx, s.ego.vy)
            out.append(PlanOutput(traj, latency=time.perf_counter() - t0))
        return out


class PDMClosed:
    """NAVSIM's rule-based reference planner: the PDM-Closed trajectory stored in each
    sample's metric cache (built from the map, the route and the scene at t = 0, never the
    logged future), resampled to the plan's 10 poses at 0.5 s (it spans 5 s)."""

    name = "pdm-closed"
    needs_answer = False

    def __call__(self, samples: list[DrivingSample], roots: list[Path]) -> list[PlanOutput]:
        from autovla.scoring.interpolate import plan_poses
        from autovla.scoring.pdm_score import load_cache_cached

        out = []
        for s, root in zip(samples, roots, strict=True):
            t0 = time.perf_counter()
            if not s.scoring:
                raise ValueError(
                    f"sample {s.id!r}, field 'scoring': pdm-closed needs a metric cache"
                )
            cache = load_cache_cached(root, s)
            traj = plan_poses(cache.pdm_closed, FUTURE_STEPS)
            out.append(PlanOutput(traj, latency=time.perf_counter() - t0))
        return out


class Expert:
    """The logged future itself: the upper bound of every imitation metric."""

    name = "expert"
    needs_answer = True

    def __call__(self, samples: list[DrivingSample], roots: list[Path]) -> list[PlanOutput]:
        return [PlanOutput(s.future_array()) for s in samples]


class QuantizedTruth:
    """The logged future encoded and decoded by the action codebook: the quantisation bound."""

    name = "quantized-gt"
    needs_answer = True

    def __init__(self, codebook_path: str | Path):
        from autovla.tokenizer.codebook import Codebook

        self.codebook = Codebook.load(codebook_path)

    def __call__(self, samples: list[DrivingSample], roots: list[Path]) -> list[PlanOutput]:
        import torch

        gt = np.stack([s.future_array() for s in samples])
        t0 = time.perf_counter()
        ids = self.codebook.encode(torch.as_tensor(gt, dtype=torch.float32))
        dec = self.codebook.decode(ids).detach().cpu().double().numpy()
        per = (time.perf_counter() - t0) / max(len(samples), 1)
        return [
            PlanOutput(d, latency=per, extra={"action_ids": i.tolist()})
            for d, i in zip(dec, ids, strict=True)
        ]


BASELINES = ("constant-velocity", "pdm-closed", "expert", "quantized-gt")


def make_baseline(name: str, codebook: str | Path | None = None) -> PlanFn:
    """A baseline by its registered name."""
    if name == "constant-velocity":
        return ConstantVelocity()
    if name == "pdm-closed":
        return PDMClosed()
    if name == "expert":
        return Expert()
    if name == "quantized-gt":
        if codebook is None:
            raise ValueError("the quantized-gt baseline needs a codebook file (--codebook)")
        return QuantizedTruth(codebook)
    raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
