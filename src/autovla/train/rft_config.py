"""The RFT (GRPO) stage's config sections and its run config; see `train/config.py` for the
sections every stage shares. RFT's defaults differ where docs/method.md section 4 says so:
LoRA on, lr 3e-5, no warm-up.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from autovla.config import StrictModel
from autovla.train.config import RunConfig


class GRPOConfig(StrictModel):
    prompts_per_step: int = Field(default=2, ge=1, description="prompts per process per step (B)")
    forward_prompts: int | None = Field(
        default=None, ge=1, description="prompts per policy forward (memory); null = all B"
    )
    group_size: int = Field(default=8, ge=2, description="completions sampled per prompt (G)")
    temperature: float = Field(default=1.0, gt=0, description="sampling temperature (paper 1.0)")
    top_p: float = Field(default=1.0, gt=0, le=1)
    beta: float = Field(default=0.04, ge=0, description="weight of the k3 KL to the reference")
    clip_eps: float = Field(default=0.2, gt=0, description="PPO ratio clip (num_epochs > 1)")
    scale_advantages: bool = Field(
        default=True,
        description="divide advantages by the group's reward std (paper); false: centre only",
    )
    groups_span_processes: bool = Field(
        default=False,
        description="every process samples group_size / num_processes completions of the same "
        "prompts and the group statistics are gathered (more completions per prompt than one "
        "process holds); false: each process samples whole groups of its own prompts",
    )
    num_epochs: int = Field(default=1, ge=1, description="policy updates per sampled batch")
    max_reasoning_tokens: int | None = Field(
        default=None, ge=1, description="cap on sampled reasoning; null = the prompt format's"
    )
    constrained_logprobs: bool = Field(
        default=True,
        description="score tokens under the planner's constraints (the sampling distribution); "
        "false: over the whole vocabulary",
    )


class RewardConfig(StrictModel):
    driving_score: str = Field(
        default="pdms",
        description="registered name (pdms | ade | closed_loop) or a dotted path module:fn",
    )
    scale: float = Field(default=10.0, gt=0, description="s in r = s * score - penalty")
    penalty_weight: float = Field(default=0.3, ge=0, description="w of the reasoning penalty")
    penalty_k: float = Field(default=0.002, gt=0, description="sigmoid slope per character")
    penalty_c: float = Field(default=400.0, description="sigmoid centre in characters")


class RFTConfig(RunConfig):
    """One RFT run: start from an SFT model directory (`model.path`)."""

    stage: ClassVar[str] = "rft"
    stage_defaults: ClassVar[dict[str, Any]] = {
        "optim": {"lr": 3e-5, "warmup_steps": 0},
        "train": {"lora": {"enabled": True}},  # r=8, alpha=8, dropout 0.1 on q/k/v/o
        "output": {"dir": "runs/rft"},
    }

    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
