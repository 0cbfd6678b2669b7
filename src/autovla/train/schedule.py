"""Learning-rate schedule (docs/method.md section 4): linear warm-up, then step decay."""

from __future__ import annotations


def lr_factor(step: int, warmup_steps: int, decay_every: int, gamma: float) -> float:
    """Multiplier of the base lr for optimiser step `step` (0-based).

    Warm-up ramps linearly from 1/warmup to 1 over `warmup_steps` steps (never 0, so the first
    step already moves); after warm-up the lr is multiplied by `gamma` every `decay_every`
    steps, counted from the end of warm-up.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if decay_every < 1:
        raise ValueError(f"decay_every must be >= 1, got {decay_every}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return gamma ** ((step - warmup_steps) // decay_every)


def lr_at(step: int, base_lr: float, warmup_steps: int, decay_every: int, gamma: float) -> float:
    return base_lr * lr_factor(step, warmup_steps, decay_every, gamma)
