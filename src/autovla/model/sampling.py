"""Token choice for the planner: greedy or temperature / top-p sampling over allowed ids."""

from __future__ import annotations

import torch


def choose_tokens(
    logits: torch.Tensor,
    allowed: torch.Tensor | None,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token per row of `logits` [R, V]; `allowed` [R, V] bool masks the candidates.

    temperature <= 0 means greedy (the lowest id wins ties, so runs are reproducible).
    """
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if temperature <= 0:
        return logits.argmax(-1)
    probs = nucleus(torch.softmax(logits / temperature, dim=-1), top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the smallest prefix of most likely tokens whose mass reaches top_p (always
    at least one token); rows are not renormalised."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p >= top_p
    return torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(drop, 0.0))


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen
