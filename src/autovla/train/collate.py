"""Batches for SFT: ground-truth futures -> action tokens -> the assistant answer -> tensors.

Runs inside DataLoader workers, so images are decoded and tokenized off the training thread.
Dual thinking: a sample with reasoning gets the slow answer (mode line + chain of thought),
the rest the fast answer (`fast_share` moves a fixed share of the samples with reasoning to
the fast answer, so the fast mode also learns the complex scenes). Action-only: the
action-only system prompt and no reasoning at all.
A waypoint prompt format (`answer_kind: waypoints`) answers with the future's positions as
text instead of action tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from autovla.train.data import Item
from autovla.train.loss import sample_weights

Variant = Literal["dual", "action_only"]


def has_reasoning(sample: Any) -> bool:
    return bool(sample.reasoning and sample.reasoning.strip())


def trained_fast(sample_id: str, share: float, seed: int) -> bool:
    """Whether a sample with reasoning belongs to the `share` trained with the fast answer.

    A hash of the id, not a random draw per batch: the same samples every epoch, in every
    DataLoader worker and after a resume."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


class SFTCollator:
    """Callable turning a list of `Item`s into model inputs plus `sample_weight` and `is_slow`."""

    def __init__(
        self,
        processor: Any,
        fmt: Any,
        codebook: Any,
        variant: Variant,
        lambda_cot: float,
        fast_share: float = 0.0,
        seed: int = 0,
    ):
        if variant not in ("dual", "action_only"):
            raise ValueError(f"variant must be 'dual' or 'action_only', got {variant!r}")
        if not 0.0 <= fast_share < 1.0:
            raise ValueError(f"fast_share must be in [0, 1), got {fast_share}")
        self.processor, self.fmt, self.codebook = processor, fmt, codebook
        self.variant, self.lambda_cot = variant, lambda_cot
        self.fast_share, self.seed = fast_share, seed

    def is_slow(self, sample: Any) -> bool:
        """Dual thinking trains a sample with reasoning slow, unless it is in the fast share."""
        return (
            self.variant == "dual"
            and has_reasoning(sample)
            and not trained_fast(sample.id, self.fast_share, self.seed)
        )

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
        slow = [self.is_slow(it.sample) for it in items]
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
