"""The model planner behind the evaluation interface (`plan_fn(samples, roots)`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from autovla.data.schema import DrivingSample
from autovla.eval.baselines import PlanOutput


class ModelPlanFn:
    """Wraps `autovla.model.planner.Planner`: the first of K plans is the answer, all K are the
    best-of-K candidates. Latency is the batch's wall time shared equally by its samples."""

    needs_answer = False

    def __init__(
        self,
        planner,
        mode: str = "auto",
        num_samples: int = 1,
        temperature: float | None = None,
        seed: int = 0,
    ):
        self.planner = planner
        self.mode = mode
        self.num_samples = num_samples
        # K identical greedy plans would make best-of-K meaningless: sample when K > 1
        self.temperature = (1.0 if num_samples > 1 else 0.0) if temperature is None else temperature
        self.seed = seed
        self.name = f"model ({mode})"
        self.text_answer = planner.vla.fmt.answer_kind == "waypoints"
        tok = planner.vla.tokenizer
        self.count_tokens = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])

    def __call__(self, samples: list[DrivingSample], roots: list[Path]) -> list[PlanOutput]:
        res = self.planner.plan(
            samples,
            roots,
            mode=self.mode,
            num_samples=self.num_samples,
            temperature=self.temperature,
            seed=self.seed,
        )
        k = self.num_samples
        out = []
        for i in range(len(samples)):
            group = res[i * k : (i + 1) * k]
            first = group[0]
            per = first.timings.get("total", 0.0) / max(len(samples), 1)
            out.append(
                PlanOutput(
                    first.trajectory,
                    mode=first.mode,
                    reasoning=first.reasoning,
                    latency=per,
                    candidates=np.stack([g.trajectory for g in group]) if k > 1 else None,
                    num_tokens=first.num_generated_tokens,
                    text_answer=self.text_answer,
                    parse_error=first.parse_error,
                )
            )
        return out


def planner_plan_fn(
    model_dir: str | os.PathLike,
    mode: str = "auto",
    num_samples: int = 1,
    seed: int = 0,
    action_choice: str = "argmax",
    decoding: str = "auto",
) -> ModelPlanFn:
    """Load a model directory (GPU in bf16 when there is one) and wrap its planner;
    `action_choice` picks greedy action tokens, `decoding` the decoding path (see
    `autovla.model.planner`)."""
    import torch

    from autovla.model.checkpoint import AutoVLA
    from autovla.model.planner import Planner

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    vla = AutoVLA.from_pretrained(model_dir, device=device, dtype=dtype)
    planner = Planner(vla, action_choice=action_choice, decoding=decoding)
    return ModelPlanFn(planner, mode=mode, num_samples=num_samples, seed=seed)
