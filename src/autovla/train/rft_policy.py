"""The policy's log-probabilities of sampled completions, under the planner's constraints.

The planner samples each token from the model's distribution restricted to what is allowed
at that point (one of the two mode tokens, reasoning text without action tokens, then only
action tokens). GRPO must score the same distribution, so every sampled position is scored
with log-softmax over its phase's allowed ids (`constrained=True`); otherwise a negative
advantage would push probability onto tokens the sampler can never pick.

Phases of the sampled positions of an `auto` completion: the first is the mode choice, the
last 10 are the action tokens, the ones between are reasoning (slow path only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from autovla.data.schema import FUTURE_STEPS

FREE, CHOOSE, REASON, ACTIONS = 0, 1, 2, 3


def phase_table(planner: Any) -> torch.Tensor:
    """[4, V] bool: allowed ids per phase (FREE allows all: forced text is not scored)."""
    actions = planner.action_allowed
    choose = torch.zeros_like(actions)
    choose[[planner.fast_ids[planner.common], planner.slow_ids[planner.common]]] = True
    return torch.stack([torch.ones_like(actions), choose, planner.reason_allowed, actions])


def sampled_phases(sampled_mask: Sequence[bool]) -> list[int]:
    """Phase of every completion position (FREE where the text was forced)."""
    pos = [i for i, s in enumerate(sampled_mask) if s]
    if len(pos) < FUTURE_STEPS + 1:
        raise ValueError(
            f"a completion with {len(pos)} sampled tokens: expected the mode choice and "
            f"{FUTURE_STEPS} actions (was it planned with mode='auto'?)"
        )
    phases = [FREE] * len(sampled_mask)
    phases[pos[0]] = CHOOSE
    for i in pos[1:-FUTURE_STEPS]:
        phases[i] = REASON
    for i in pos[-FUTURE_STEPS:]:
        phases[i] = ACTIONS
    return phases


def padded(rows: Sequence[Sequence[float | int | bool]], dtype: torch.dtype, device: Any):
    """Right-padded [R, L] tensor (zeros after each row's end)."""
    out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(list(r), dtype=dtype)
    return out.to(device)


class PolicyLogprobs(torch.nn.Module):
    """The policy forward as a module, so DDP sees it (and syncs gradients): per-token
    log-probs of given completions and, without gradient, the policy's entropy there.

    With `phases` [R, L] and `table` [P, V], each position's distribution is restricted to
    its phase's allowed ids before the softmax.
    """

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        completion_ids: list[list[int]],
        pad_id: int,
        phases: torch.Tensor | None = None,
        table: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from autovla.model.logprobs import completion_logits

        logits, comp, cmask = completion_logits(self.model, batch, completion_ids, pad_id)
        logits = logits.float()
        if phases is not None and table is not None:
            if table.shape[-1] != logits.shape[-1]:
                raise ValueError(f"phase table: {table.shape[-1]} ids, logits: {logits.shape[-1]}")
            logits = logits.masked_fill(~table[phases], float("-inf"))  # table[phases]: [R, L, V]
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all.gather(-1, comp[..., None]).squeeze(-1) * cmask
        with torch.no_grad():
            p = logp_all.exp()
            entropy = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1) * cmask
        return logp, entropy
