"""The SFT loss of docs/method.md section 4, as a pure function over logits and labels.

    L = 1/N sum_i w_i (L_lm,i + lambda_a L_act,i),   w_i = lambda_cot if sample i is trained
                                                     with its reasoning, else 1

L_lm,i is the mean next-token cross-entropy over sample i's answer tokens (labels != -100),
L_act,i the mean over its action tokens only (0 when it has none). Per-sample means keep a
long chain of thought from drowning the ten action tokens of its own sample.

Optionally (`first_action_weight`, 1 in the paper's recipe) L_act,i is a weighted mean in
which the first action token counts that many times: under teacher forcing every later token
sees the true previous motion and mostly continues it, so the first token is the only one
that must read the current speed from the prompt, yet it is a tenth of the action term.

Optionally (`soft_action_targets`, off in the paper's recipe) an action token's target is a
distribution over all action tokens that decays with the distance between their end contours
(`action_soft_targets`): a near miss then costs less than a far one, which gives a small model
trained briefly a graded signal about speed and curvature instead of K unrelated classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable
    lm: torch.Tensor  # mean over samples of L_lm,i (detached)
    action: torch.Tensor  # mean over samples of L_act,i (detached)
    action_correct: torch.Tensor  # teacher-forced argmax hits on action tokens (count)
    action_total: torch.Tensor  # action tokens (count)


def sft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    action_mask: torch.Tensor,
    sample_weight: torch.Tensor,
    lambda_a: float = 1.0,
    soft_action_targets: torch.Tensor | None = None,
    action_start: int = 0,
    first_action_weight: float = 1.0,
) -> LossOutput:
    """logits (B, L, V); labels (B, L) = input ids on the answer, -100 elsewhere (not shifted);
    action_mask (B, L) True where the label is an action token; sample_weight (B,);
    soft_action_targets (K, K): row k is the target distribution for action token k, whose
    id is action_start + k (None: one-hot, plain cross-entropy); first_action_weight: weight
    of each sample's first action token within its action term."""
    if logits.shape[:2] != labels.shape or labels.shape != action_mask.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
            f"action_mask {tuple(action_mask.shape)}"
        )
    # Position t predicts token t+1.
    targets = labels[:, 1:]
    is_act = action_mask[:, 1:]
    valid = targets != IGNORE_INDEX
    rows = valid.nonzero(as_tuple=True)[0]
    # Only answer positions go through the full-vocabulary softmax (memory on big vocabularies).
    picked = logits[:, :-1][valid].float()
    tok_loss = F.cross_entropy(picked, targets[valid], reduction="none")
    if soft_action_targets is not None:
        sel = is_act[valid].nonzero(as_tuple=True)[0]
        K = soft_action_targets.shape[0]
        logp = picked[sel].log_softmax(-1)[:, action_start : action_start + K]
        q = soft_action_targets.to(logp)[targets[valid][sel] - action_start]
        tok_loss = tok_loss.index_copy(0, sel, -(q * logp).sum(-1))
    batch = labels.shape[0]
    zeros = torch.zeros(batch, device=logits.device, dtype=torch.float32)
    n_tok = zeros.index_add(0, rows, torch.ones_like(tok_loss))
    lm = zeros.index_add(0, rows, tok_loss) / n_tok.clamp(min=1)
    act_w = is_act.float()
    if first_action_weight != 1.0:
        first = is_act & (is_act.long().cumsum(1) == 1)
        act_w = act_w + (first_action_weight - 1.0) * first.float()
    act_sel = act_w[valid]
    n_act = zeros.index_add(0, rows, act_sel)
    act = zeros.index_add(0, rows, tok_loss * act_sel) / n_act.clamp(min=1)
    w = sample_weight.to(device=logits.device, dtype=torch.float32)
    loss = (w * (lm + lambda_a * act)).mean()
    with torch.no_grad():
        hits = (picked.argmax(-1) == targets[valid]) & is_act[valid]
    return LossOutput(
        loss=loss,
        lm=lm.detach().mean(),
        action=act.detach().mean(),
        action_correct=hits.sum(),
        action_total=is_act[valid].sum(),
    )


def sample_weights(has_reasoning: list[bool], lambda_cot: float) -> torch.Tensor:
    return torch.tensor([lambda_cot if r else 1.0 for r in has_reasoning], dtype=torch.float32)


def action_soft_targets(token_end: torch.Tensor, sigma: float) -> torch.Tensor:
    """(K, K) target distributions: row k is proportional to exp(-d^2 / (2 sigma^2)), with d
    the mean corner distance (m) between the end contours (K, 4, 2) of tokens k and j."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 metres, got {sigma}")
    end = token_end.double()
    d = (end[:, None] - end[None]).norm(dim=-1).mean(-1)  # (K, K)
    return torch.softmax(-(d * d) / (2.0 * sigma * sigma), dim=-1).float()
