"""GRPO maths (METHOD section 4) as pure functions: group advantages and the per-token loss.

    A_i   = (r_i - mean_group(r)) / (std_group(r) + 1e-4)
    loss  = -mean_tokens( min(rho A, clip(rho, 1 - eps, 1 + eps) A) - beta KL ),
    rho   = exp(logp - logp_old),   KL = exp(ref - logp) - (ref - logp) - 1   (the k3 estimate)

With one policy update per batch logp_old is logp detached, so rho = 1 in value and its
gradient is A * grad(logp): the paper's loss. Several update epochs make the clip matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ADV_EPS = 1e-4


def group_advantages(
    rewards: np.ndarray | torch.Tensor, group_size: int, scale: bool = True
) -> torch.Tensor:
    """Centre rewards (B * G,) within consecutive groups of `group_size` completions and, with
    `scale` (the paper's GRPO), divide by the group's std.

    Equal rewards in a group give zero advantage (nothing to learn from that prompt). Without
    `scale` (Dr. GRPO, Liu et al. 2025) an advantage keeps the reward's units, so a group whose
    completions differ only by a small term (the reasoning penalty) pushes as little as that
    term is worth, instead of as hard as a group whose driving scores differ.
    """
    r = torch.as_tensor(
        np.asarray(rewards, dtype=np.float32) if not torch.is_tensor(rewards) else rewards
    )
    r = r.float()
    if group_size < 2:
        raise ValueError(f"a GRPO group needs at least 2 completions, got {group_size}")
    if r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
    g = r.view(-1, group_size)
    adv = g - g.mean(1, keepdim=True)
    if scale:
        adv = adv / (g.std(1, keepdim=True) + ADV_EPS)
    return adv.view(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate; zero where the two agree, never negative."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


@dataclass
class GRPOLossOutput:
    loss: torch.Tensor  # scalar, differentiable
    kl: torch.Tensor  # mean per-token KL (detached)
    clip_fraction: torch.Tensor  # share of tokens whose ratio was clipped (detached)
    ratio: torch.Tensor  # mean ratio (detached)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.04,
    clip_eps: float = 0.2,
) -> GRPOLossOutput:
    """Token tensors are (N, L) over completion positions; `mask` marks the tokens that count
    (the ones the policy sampled); advantages are (N,). Mean over each completion's tokens,
    then over completions, as in GRPO."""
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
    per_token = -(surrogate - beta * kl)
    n = m.sum(1).clamp(min=1.0)
    loss = ((per_token * m).sum(1) / n).mean()
    total = m.sum().clamp(min=1.0)
    was_clipped = ((ratio - clipped).abs() > 1e-8).float()
    return GRPOLossOutput(
        loss=loss,
        kl=((kl * m).sum() / total).detach(),
        clip_fraction=((was_clipped * m).sum() / total).detach(),
        ratio=((ratio * m).sum() / total).detach(),
    )
