"""Reward functions for RFT: plain callables over a batch of completions, found by name.

Each term takes the samples (with their ground truth), their dataset roots and the
completions, and returns one float per completion. The total reward is

    r = scale * driving_score - cot_penalty

with driving_score in [0, 1] (PDMS from the embedded world's scorer by default, ADE-based for
Waymo-style data, or the closed-loop driving score of the plan followed in the embedded world
with the other agents reacting) and the reasoning-length penalty
w * sigmoid(k * (len(text) - c)) applied only to completions that took the slow path
(METHOD section 4: s = 10, w = 0.3, k = 0.002, c = 400 characters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autovla.data.schema import DrivingSample


@dataclass
class Completion:
    """What a reward needs to know about one sampled answer."""

    trajectory: np.ndarray  # (10, 3) ego frame
    text: str  # the whole answer text
    mode: str  # "fast" or "slow"


RewardFn = Callable[[Sequence[DrivingSample], Sequence[Path], Sequence[Completion]], np.ndarray]


def _indices_by_sample(samples: Sequence[DrivingSample]) -> list[list[int]]:
    """Positions of each distinct sample object (a group's completions share one)."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(id(s), []).append(i)
    return list(groups.values())


def pdms_reward(samples, roots, completions) -> np.ndarray:
    """PDMS of each completion's plan against its sample's metric cache (NAVSIM v1.1 scorer,
    docs/scoring.md); NaN for a sample without a cache or whose cache cannot be read.

    Completions of one sample are scored together in one batched call.
    """
    import logging

    from autovla.scoring import score_sample

    out = np.full(len(completions), np.nan)
    for idx in _indices_by_sample(samples):
        s, root = samples[idx[0]], roots[idx[0]]
        if s.scoring is None:
            continue
        plans = np.stack([completions[i].trajectory for i in idx])
        try:
            out[idx] = score_sample(Path(root), s, plans).pdms
        except (OSError, ValueError) as e:  # a broken cache: no score, say why
            logging.getLogger(__name__).warning(
                "pdms reward: sample %r not scored: %s: %s", s.id, type(e).__name__, e
            )
    return out


def ade_reward(samples, roots, completions, scale: float = 2.0) -> np.ndarray:
    """exp(-ADE / scale) against the ground-truth future: 1 for a perfect plan, in (0, 1]."""
    out = np.empty(len(completions))
    for i, (s, c) in enumerate(zip(samples, completions, strict=True)):
        err = np.linalg.norm(np.asarray(c.trajectory)[:, :2] - s.future_array()[:, :2], axis=1)
        out[i] = float(np.exp(-err.mean() / scale))
    return out


def closed_loop_reward(samples, roots, completions, horizon: float = 5.0) -> np.ndarray:
    """Closed-loop driving score of each plan, followed for 5 s from the sample's world state
    with the other agents reacting (embedded-world samples only: scenario type, seed, time)."""
    from autovla.sim.closed_loop import plan_scores

    out = np.zeros(len(completions))
    for idx in _indices_by_sample(samples):
        s = samples[idx[0]]
        scenario = closed_loop_scenario(s)
        plans = np.stack([completions[i].trajectory for i in idx])
        out[idx] = plan_scores(*scenario, plans, horizon)
    return out


def closed_loop_scenario(sample: DrivingSample) -> tuple[str, int, float]:
    """(scenario type, seed, time) of an embedded-world sample, or a ValueError naming the
    missing field."""
    meta = sample.meta or {}
    if sample.scenario_type is None:
        raise ValueError(
            f"sample {sample.id!r}, field 'scenario_type': the closed_loop reward needs it"
        )
    for key in ("seed", "t"):
        if key not in meta:
            raise ValueError(
                f"sample {sample.id!r}, field 'meta.{key}': the closed_loop reward replays "
                "embedded-world scenarios only"
            )
    return sample.scenario_type, int(meta["seed"]), float(meta["t"])


def cot_penalty(
    completions: Sequence[Completion], weight: float = 0.3, k: float = 0.002, c: float = 400.0
) -> np.ndarray:
    """w * sigmoid(k * (len(text) - c)) on slow completions, 0 on fast ones."""
    lengths = np.array([len(x.text) for x in completions], dtype=np.float64)
    slow = np.array([x.mode == "slow" for x in completions])
    return np.where(slow, weight / (1.0 + np.exp(-k * (lengths - c))), 0.0)


DRIVING_SCORES: dict[str, RewardFn] = {
    "pdms": pdms_reward,
    "ade": ade_reward,
    "closed_loop": closed_loop_reward,
}


def get_driving_score(name: str) -> RewardFn:
    """A registered score by name, or any callable by dotted path (`pkg.module:fn` or
    `pkg.module.fn`) with the same signature, returning scores in [0, 1]."""
    if name in DRIVING_SCORES:
        return DRIVING_SCORES[name]
    if ":" in name or "." in name:
        import importlib

        module, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"reward {name!r}: cannot import {attr!r} from {module!r}: {e}") from e
        if not callable(fn):
            raise ValueError(f"reward {name!r} is not callable")
        return fn
    raise ValueError(
        f"unknown reward {name!r}; valid: {', '.join(sorted(DRIVING_SCORES))} "
        "or a dotted path module:function"
    )


def total_reward(
    samples: Sequence[DrivingSample],
    roots: Sequence[Path],
    completions: Sequence[Completion],
    driving_score: str = "pdms",
    scale: float = 10.0,
    penalty_weight: float = 0.3,
    penalty_k: float = 0.002,
    penalty_c: float = 400.0,
) -> dict[str, np.ndarray]:
    """Every term separately (for logging) and the total."""
    score = get_driving_score(driving_score)(samples, roots, completions)
    penalty = cot_penalty(completions, penalty_weight, penalty_k, penalty_c)
    return {"driving_score": score, "cot_penalty": penalty, "total": scale * score - penalty}
