"""RFT rewards as a weighted list of plain functions (docs/method.md section 4).

A reward function takes the samples of a step (with their ground truth), their dataset roots
and the completions, plus its own keyword parameters from the config, and returns one float
per completion, or NaN for a completion it cannot score. The config lists the terms:

    reward:
      scale: 10.0
      functions:
        - {name: pdms, weight: 1.0}
        - {name: reasoning_length, weight: -0.3, k: 0.002, c: 400}

and a completion's total reward is `scale * sum_j(weight_j * value_j)` over the terms that
scored it. With the two terms above that is the reference implementation's
r = s * (PDMS - w * sigmoid(k * (len(text) - c))): the scale multiplies the penalty too.
A completion that no term could score gets a NaN total; GRPO leaves it out of its group
(`grpo.group_advantages`) and the step's statistics count it, so one sample without scoring
data never stops a run. A term that cannot score some completions of a group but can score
the others makes their totals incomparable: a function should return NaN for every
completion of a sample it cannot score (all the built-in ones do).

`name` is a registered function (`REWARDS`) or, with `reward.allow_code: true`, any function
given as `package.module:function`: importing it runs that module's code, which is why a
config needs the explicit permission.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autovla.data.schema import DrivingSample

log = logging.getLogger(__name__)


class RewardConfigError(ValueError):
    """A reward list that cannot be used: unknown name, bad parameter, code not allowed."""


@dataclass
class Completion:
    """What a reward needs to know about one sampled answer."""

    trajectory: np.ndarray  # (10, 3) ego frame
    text: str  # the whole answer text
    mode: str  # "fast" or "slow"


# fn(samples, roots, completions, **params) -> (N,) floats, NaN where it cannot score
RewardFn = Callable[..., np.ndarray]


def _indices_by_sample(samples: Sequence[DrivingSample]) -> list[list[int]]:
    """Positions of each distinct sample object (a group's completions share one)."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(id(s), []).append(i)
    return list(groups.values())


# --- the driving scores, in [0, 1] ---------------------------------------------------------
def score_pdms(root: Path, sample: DrivingSample, plans: np.ndarray) -> np.ndarray:
    """PDMS of each plan (K, 10, 3) of one sample against its metric cache (the NAVSIM v1.1
    scorer, docs/scoring.md): the only call into the scorer, so that swapping the scorer
    touches this function alone."""
    from autovla.scoring import score_sample

    return np.asarray(score_sample(root, sample, plans).pdms, dtype=np.float64)


def pdms(samples, roots, completions) -> np.ndarray:
    """PDMS of each completion's plan; NaN for a sample without a metric cache or whose cache
    cannot be read (logged). The completions of one sample are scored in one call."""
    out = np.full(len(completions), np.nan)
    for idx in _indices_by_sample(samples):
        s, root = samples[idx[0]], roots[idx[0]]
        if s.scoring is None:
            continue
        plans = np.stack([completions[i].trajectory for i in idx])
        try:
            out[idx] = score_pdms(Path(root), s, plans)
        except (OSError, ValueError, KeyError) as e:  # a broken sidecar: no score, say why
            log.warning("pdms reward: sample %r not scored: %s: %s", s.id, type(e).__name__, e)
    return out


def ade(samples, roots, completions, tau: float = 2.0) -> np.ndarray:
    """exp(-ADE / tau) against the ground-truth future (tau in metres): 1 for a perfect plan,
    in (0, 1]; NaN for a sample without a future."""
    out = np.full(len(completions), np.nan)
    for i, (s, c) in enumerate(zip(samples, completions, strict=True)):
        if s.future is None:
            continue
        err = np.linalg.norm(np.asarray(c.trajectory)[:, :2] - s.future_array()[:, :2], axis=1)
        out[i] = float(np.exp(-err.mean() / tau))
    return out


def closed_loop(samples, roots, completions, horizon: float = 5.0) -> np.ndarray:
    """Closed-loop driving score of each plan, followed for `horizon` s from the sample's world
    state with the other agents reacting; NaN for a sample that is not an embedded-world
    scenario (no scenario type, seed and time to replay)."""
    from autovla.sim.closed_loop import plan_scores

    out = np.full(len(completions), np.nan)
    for idx in _indices_by_sample(samples):
        scenario = closed_loop_scenario(samples[idx[0]])
        if scenario is None:
            continue
        plans = np.stack([completions[i].trajectory for i in idx])
        out[idx] = plan_scores(*scenario, plans, horizon)
    return out


def closed_loop_scenario(sample: DrivingSample) -> tuple[str, int, float] | None:
    """(scenario type, seed, time) of an embedded-world sample, None for any other sample."""
    meta = sample.meta or {}
    if sample.scenario_type is None or "seed" not in meta or "t" not in meta:
        return None
    return sample.scenario_type, int(meta["seed"]), float(meta["t"])


# --- the reasoning-length term ---------------------------------------------------------------
def reasoning_length(samples, roots, completions, k: float = 0.002, c: float = 400.0) -> np.ndarray:
    """sigmoid(k * (len(text) - c)) on slow completions (text in characters), 0 on fast ones.

    Given a negative weight it is the paper's penalty on needless reasoning: 0.5 at c
    characters, rising towards 1 for long answers."""
    lengths = np.array([len(x.text) for x in completions], dtype=np.float64)
    slow = np.array([x.mode == "slow" for x in completions], dtype=bool)
    return np.where(slow, 1.0 / (1.0 + np.exp(-k * (lengths - c))), 0.0)


REWARDS: dict[str, RewardFn] = {
    "pdms": pdms,
    "ade": ade,
    "closed_loop": closed_loop,
    "reasoning_length": reasoning_length,
}
# names the statistics use for themselves (rft_metrics): a term may not take them
RESERVED_KEYS = ("total", "unscored", "group_std")


def is_code_path(name: str) -> bool:
    return name not in REWARDS and (":" in name or "." in name)


def resolve(name: str, allow_code: bool = False) -> RewardFn:
    """A registered reward by name or, when `allow_code`, a function by `module:function`."""
    if name in REWARDS:
        return REWARDS[name]
    if not is_code_path(name):
        raise RewardConfigError(
            f"unknown reward {name!r}; valid: {', '.join(sorted(REWARDS))} "
            "or module:function (with reward.allow_code: true)"
        )
    if not allow_code:
        raise RewardConfigError(
            f"reward {name!r} names code to import, which runs that module; set "
            "reward.allow_code: true (or pass reward.allow_code=true) to allow it"
        )
    module, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise RewardConfigError(
            f"reward {name!r}: cannot import {attr!r} from {module!r}: {e}"
        ) from None
    if not callable(fn):
        raise RewardConfigError(f"reward {name!r} is not callable")
    return fn


def term_key(name: str) -> str:
    """The name a term is logged under: the registered name, or the function's own name."""
    return name.rpartition(":")[2].rpartition(".")[2] if is_code_path(name) else name


def check_params(name: str, fn: RewardFn, params: Mapping[str, Any]) -> None:
    """Refuse parameters the function does not take (a typo must not pass silently)."""
    try:
        inspect.signature(fn).bind(None, None, None, **params)
    except TypeError as e:
        raise RewardConfigError(f"reward {name!r}: bad parameters {dict(params)}: {e}") from None


@dataclass(frozen=True)
class RewardTerm:
    key: str  # logged as reward_<key>
    fn: RewardFn
    weight: float
    params: dict[str, Any] = field(default_factory=dict)


def build_terms(
    functions: Sequence[tuple[str, float, Mapping[str, Any]]], allow_code: bool = False
) -> list[RewardTerm]:
    """(name, weight, params) triples -> checked terms with unique keys."""
    if not functions:
        raise RewardConfigError("reward.functions is empty: list at least one reward")
    terms: list[RewardTerm] = []
    for name, weight, params in functions:
        fn = resolve(name, allow_code)
        check_params(name, fn, params)
        key = term_key(name)
        if key in RESERVED_KEYS or any(t.key == key for t in terms):
            raise RewardConfigError(
                f"reward {name!r}: its log name {key!r} is taken; list each function once"
            )
        terms.append(RewardTerm(key, fn, float(weight), dict(params)))
    return terms


def _values(term: RewardTerm, out: Any, samples: Sequence[DrivingSample]) -> np.ndarray:
    try:
        v = np.asarray(out, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"reward {term.key!r} returned no floats: {e}") from None
    if v.shape != (len(samples),):
        raise ValueError(
            f"reward {term.key!r} returned {v.size} values for {len(samples)} completions"
        )
    bad = np.isinf(v)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"reward {term.key!r} returned {v[i]} for a completion of sample "
            f"{samples[i].id!r}: a reward is finite, or NaN where it cannot score"
        )
    return v


def compute_rewards(
    terms: Sequence[RewardTerm],
    scale: float,
    samples: Sequence[DrivingSample],
    roots: Sequence[Path],
    completions: Sequence[Completion],
) -> dict[str, np.ndarray]:
    """Every term's values (raw, before weighting; NaN where unscored) and the `total`:
    scale * the weighted sum over the terms that scored, NaN where none did."""
    values = {
        t.key: _values(t, t.fn(samples, roots, completions, **t.params), samples) for t in terms
    }
    stacked = np.stack([values[t.key] for t in terms])  # (terms, N)
    weights = np.array([t.weight for t in terms])[:, None]
    scored = np.isfinite(stacked)
    total = scale * np.where(scored, weights * np.nan_to_num(stacked), 0.0).sum(0)
    total[~scored.any(0)] = np.nan
    return {**values, "total": total}
