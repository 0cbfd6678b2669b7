"""GRPO maths (docs/method.md section 4) as pure functions: group advantages and the loss.

    A_i   = (r_i - mean_group(r)) / (std_group(r) + 1e-4)
    l_it  = -( min(rho A_i, clip(rho, 1 - eps, 1 + eps) A_i) - beta KL_it ),
    rho   = exp(logp - logp_old),   KL = exp(ref - logp) - (ref - logp) - 1   (the k3 estimate)
    loss  = mean over completions of (mean over each completion's tokens of l_it)

With one policy update per batch logp_old is logp detached, so rho = 1 in value and its
gradient is A * grad(logp): the paper's loss. Several update epochs make the clip matter.

Two choices have documented alternatives (`GRPOConfig`), the paper's being the default:

* Advantage scaling. `group` divides by the group's reward std (the paper): every prompt
  pushes about equally hard, however small its reward differences; a group whose completions
  differ only by the reasoning penalty then pushes as hard as one whose driving scores
  differ. `batch` divides by the std of every reward of the step: one unit for all groups,
  so small gaps stay small, while the step size stays independent of the reward's scale.
  `none` only centres (Dr. GRPO, Liu et al. 2025): advantages keep the reward's units.
* Loss normalisation. `sequence` averages each completion over its own tokens (the paper),
  which divides every token's gradient by its answer's length: the one mode-choice token of
  a slow answer (a hundred tokens of reasoning) counts about ten times less than that of a
  fast one (ten action tokens), so the choice to reason is learnt more slowly than the
  choice not to. `token` averages over every token of the batch (DAPO): each token counts
  the same, long answers weigh more in total. `constant` divides the token sum by
  completions x a fixed token count (Dr. GRPO): the same per-token weight with no
  dependence on the batch's lengths.

Completions that no reward term could score carry a NaN reward: they are left out of their
group's mean and std and get advantage 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

ADV_EPS = 1e-4
AdvantageScaling = Literal["group", "batch", "none"]
LossNormalisation = Literal["sequence", "token", "constant"]


def _as_float_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    return t.double()


def nan_std(values: np.ndarray | torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased std over the finite values (along `dim`, or of all); 0 with fewer than two."""
    v = _as_float_tensor(values)
    if dim is None:
        v, dim = v.reshape(-1), 0
    ok = torch.isfinite(v)
    n = ok.sum(dim, keepdim=True)
    mean = torch.where(ok, v, 0.0).sum(dim, keepdim=True) / n.clamp(min=1)
    sq = torch.where(ok, v - mean, 0.0).pow(2).sum(dim, keepdim=True)
    return (sq / (n - 1).clamp(min=1)).sqrt().squeeze(dim)


def group_advantages(
    rewards: np.ndarray | torch.Tensor,
    group_size: int,
    scaling: AdvantageScaling = "group",
    batch_std: float | None = None,
) -> torch.Tensor:
    """Advantages (B * G,) of rewards in consecutive groups of `group_size` completions.

    Each reward is centred on its group's mean, then divided according to `scaling`: the
    group's std (`group`), the std of all the rewards given (`batch`; pass `batch_std` when
    the batch is larger than this call sees, e.g. spread over processes) or nothing
    (`none`). NaN rewards (unscored completions) are left out of every mean and std and get
    advantage 0; so do groups whose scored rewards are all equal.
    """
    if group_size < 2:
        raise ValueError(f"a GRPO group needs at least 2 completions, got {group_size}")
    r = _as_float_tensor(rewards)
    if r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
    g = r.reshape(-1, group_size)
    ok = torch.isfinite(g)
    mean = torch.where(ok, g, 0.0).sum(1, keepdim=True) / ok.sum(1, keepdim=True).clamp(min=1)
    adv = torch.where(ok, g - mean, 0.0)
    if scaling == "group":
        adv = adv / (nan_std(g, dim=1).unsqueeze(1) + ADV_EPS)
    elif scaling == "batch":
        std = float(nan_std(g)) if batch_std is None else float(batch_std)
        adv = adv / (std + ADV_EPS)
    elif scaling != "none":
        raise ValueError(f"unknown advantage scaling {scaling!r}; valid: group, batch, none")
    return adv.reshape(-1).float()


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate; zero where the two agree, never negative."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


@dataclass
class GRPOLossOutput:
    loss: torch.Tensor  # scalar, differentiable
    kl: torch.Tensor  # mean per-token KL (detached)
    clip_fraction: torch.Tensor  # share of tokens whose ratio was clipped (detached)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.04,
    clip_eps: float = 0.2,
    normalisation: LossNormalisation = "sequence",
    batch_rows: int | None = None,
    batch_tokens: float | None = None,
    constant_tokens: int = 256,
) -> GRPOLossOutput:
    """Token tensors are (N, L) over completion positions; `mask` marks the tokens that count
    (the ones the policy sampled); advantages are (N,).

    A batch may be split over several calls (forward chunks): pass the whole batch's
    completion count `batch_rows` and counted-token total `batch_tokens` (defaults: this
    call's), and the chunks' losses add up to the batch's loss under each normalisation.
    """
    if not (logp.shape == old_logp.shape == ref_logp.shape == mask.shape):
        raise ValueError(
            f"shape mismatch: logp {tuple(logp.shape)}, old {tuple(old_logp.shape)}, "
            f"ref {tuple(ref_logp.shape)}, mask {tuple(mask.shape)}"
        )
    m = mask.float()
    a = advantages.to(logp.dtype).unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = torch.minimum(ratio * a, clipped * a)
    kl = k3_kl(logp, ref_logp)
    per_token = -(surrogate - beta * kl) * m
    rows = float(batch_rows if batch_rows is not None else logp.shape[0])
    total = m.sum().clamp(min=1.0)
    if normalisation == "sequence":
        loss = (per_token.sum(1) / m.sum(1).clamp(min=1.0)).sum() / rows
    elif normalisation == "token":
        tokens = float(batch_tokens) if batch_tokens is not None else float(total)
        loss = per_token.sum() / max(tokens, 1.0)
    elif normalisation == "constant":
        loss = per_token.sum() / (rows * constant_tokens)
    else:
        raise ValueError(
            f"unknown loss normalisation {normalisation!r}; valid: sequence, token, constant"
        )
    was_clipped = ((ratio - clipped).abs() > 1e-8).float()
    return GRPOLossOutput(
        loss=loss,
        kl=((kl * m).sum() / total).detach(),
        clip_fraction=((was_clipped * m).sum() / total).detach(),
    )
