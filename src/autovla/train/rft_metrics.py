"""RFT statistics: per-step sums and counts (added over steps and processes), then means.

Sums rather than means so that a window of steps on several processes averages correctly:
every process reports its sums, `summarise` adds them with one all-reduce and divides.
Every reward term is logged on its own (`reward_<name>`, its raw value before weighting) as the
mean over the completions it scored; `reward` is the mean total over the completions any term
scored, and `reward_unscored` counts those none did (left out of the advantages).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from autovla.train.grpo import nan_std


def step_stats(
    samples: Sequence[Any],
    plans: Sequence[Any],
    terms: dict[str, np.ndarray],
    group_size: int,
    extra: dict[str, float],
    group_std: float | None = None,
) -> dict[str, float]:
    """Sums over one step's completions (sample-major: `group_size` plans per sample).

    `terms` maps each reward term's name, and "total", to one value per completion (NaN:
    not scored). `extra` holds the loss-side sums (loss, kl, clip_fraction, entropy, tokens)
    and the step's grad_norm, lr and timings. `group_std` is the summed reward std of the
    step's groups when they are not all here (groups spanning processes); by default it is
    computed from `terms`. Samples whose `complex` flag is unset count as straightforward.
    """
    total = np.asarray(terms["total"], dtype=np.float64)
    if group_std is None:
        group_std = float(nan_std(total.reshape(-1, group_size), dim=1).sum())
    s = {
        "n": float(len(plans)),
        "reward_unscored": float((~np.isfinite(total)).sum()),
        "reward_group_std": group_std,
        "groups": float(len(samples)),
        "steps": 1.0,
        "slow": 0.0,
        "reasoning_chars": 0.0,
        **{k: float(v) for k, v in extra.items()},
    }
    for name, values in terms.items():
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        s[f"reward_{name}"] = float(v[ok].sum())
        s[f"reward_{name}_n"] = float(ok.sum())
    for kind in ("complex", "straightforward"):
        s[f"n_{kind}"] = s[f"slow_{kind}"] = s[f"chars_{kind}"] = 0.0
    for i, p in enumerate(plans):
        kind = "complex" if samples[i // group_size].complex else "straightforward"
        slow = float(p.mode == "slow")
        s[f"n_{kind}"] += 1
        s[f"slow_{kind}"] += slow
        s[f"chars_{kind}"] += len(p.text)
        s["slow"] += slow
        s["reasoning_chars"] += len(p.reasoning or "")
    return s


def summarise(window: list[dict[str, float]], acc: Any = None) -> dict[str, float]:
    """Means over the window and (with an accelerator) all processes, from the sums."""
    keys = sorted(window[0])
    local = torch.tensor([sum(w[k] for w in window) for k in keys], dtype=torch.float64)
    if acc is not None:
        local = acc.reduce(local.to(acc.device), reduction="sum").cpu()
    t = dict(zip(keys, local.tolist(), strict=True))
    n, tok = max(t["n"], 1.0), max(t["tokens"], 1.0)
    steps = max(t["steps"], 1.0)  # summed over processes as well

    def share(a: str, b: str) -> float:
        return t[a] / t[b] if t[b] else float("nan")

    names = [
        k[len("reward_") : -len("_n")] for k in keys if k.startswith("reward_") and k.endswith("_n")
    ]
    rewards = {f"reward_{x}": share(f"reward_{x}", f"reward_{x}_n") for x in names if x != "total"}
    return {
        "reward": share("reward_total", "reward_total_n"),
        **rewards,
        "reward_unscored": t["reward_unscored"],
        "reward_group_std": t["reward_group_std"] / max(t["groups"], 1.0),
        "loss": t["loss"] / steps,
        "kl": t["kl"] / tok,
        "clip_fraction": t["clip_fraction"] / tok,
        "entropy": t["entropy"] / tok,
        "slow_share": t["slow"] / n,
        "slow_share_complex": share("slow_complex", "n_complex"),
        "slow_share_straightforward": share("slow_straightforward", "n_straightforward"),
        "chars_complex": share("chars_complex", "n_complex"),
        "chars_straightforward": share("chars_straightforward", "n_straightforward"),
        "reasoning_chars": t["reasoning_chars"] / n,
        "grad_norm": window[-1]["grad_norm"],
        "lr": window[-1]["lr"],
        "gen_s": t["gen_s"] / steps,
        "step_s": t["step_s"] / steps,
    }
