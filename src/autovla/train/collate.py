"""Batches for SFT: ground-truth futures -> action tokens -> the assistant answer -> tensors.

Runs inside DataLoader workers, so images are decoded and tokenized off the training thread.
Dual thinking: a sample with reasoning gets the slow answer (mode line + chain of thought),
the rest the fast answer. Action-only: the action-only system prompt and no reasoning at all.
A waypoint prompt format (`answer_kind: waypoints`) answers with the future's positions as
text instead of action tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from autovla.train.data import Item
from autovla.train.loss import sample_weights

Variant = Literal["dual", "action_only"]


def has_reasoning(sample: Any) -> bool:
    return bool(sample.reasoning and sample.reasoning.strip())


class SFTCollator:
    """Callable turning a list of `Item`s into model inputs plus `sample_weight` and `is_slow`."""

    def __init__(
        self, processor: Any, fmt: Any, codebook: Any, variant: Variant, lambda_cot: float
    ):
        if variant not in ("dual", "action_only"):
            raise ValueError(f"variant must be 'dual' or 'action_only', got {variant!r}")
        self.processor, self.fmt, self.codebook = processor, fmt, codebook
        self.variant, self.lambda_cot = variant, lambda_cot

    def answers(self, items: Sequence[Item]) -> tuple[list[str], list[bool]]:
        """The answer texts and which are slow. Action-token formats encode the future with
        the codebook; waypoint formats write its (x, y) positions as text (the answer has no
        action tokens, so the loss is the LM loss alone)."""
        from autovla.model.prompts import render_answer, render_waypoint_answer

        futures = []
        for it in items:
            if it.sample.future is None:
                raise ValueError(
                    f"sample {it.sample.id!r} in {it.root}: field 'future' is missing; "
                    "training needs the ground-truth future"
                )
            futures.append(it.sample.future_array())
        slow = [self.variant == "dual" and has_reasoning(it.sample) for it in items]
        reasoning = [it.sample.reasoning if s else None for it, s in zip(items, slow, strict=True)]
        if self.fmt.answer_kind == "waypoints":
            texts = [
                render_waypoint_answer(f, r, self.fmt)
                for f, r in zip(futures, reasoning, strict=True)
            ]
            return texts, slow
        ids = self.codebook.encode(torch.from_numpy(np.stack(futures)).float()).tolist()
        texts = [render_answer(row, r, self.fmt) for row, r in zip(ids, reasoning, strict=True)]
        return texts, slow

    def __call__(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        from autovla.model.inputs import encode_batch

        texts, slow = self.answers(items)
        system = "dual" if self.variant == "dual" else "action_only"
        batch = encode_batch(
            self.processor,
            [it.sample for it in items],
            [it.root for it in items],
            self.fmt,
            answers=texts,
            system=system,
        )
        batch["sample_weight"] = sample_weights(slow, self.lambda_cot)
        batch["is_slow"] = torch.tensor(slow, dtype=torch.bool)
        return batch
