"""The typed RFT (GRPO) run config. CPU defaults; the YAML recipes in `configs/` override.

Model, data, LoRA, optimiser and output sections reuse the SFT config's classes so the two
stages read alike; only the defaults that METHOD section 4 sets differently are changed here
(LoRA on, lr 3e-5, no warm-up, output dir).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from autovla.config import StrictModel
from autovla.train.config import (
    DataConfig,
    LoraConfig,
    ModelSource,
    OptimConfig,
    OutputConfig,
    check_trainable,
)


class GRPOConfig(StrictModel):
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
    generator: Literal["planner"] = Field(
        default="planner", description="sampling backend (constrained decoding of the planner)"
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


class RFTLoraConfig(LoraConfig):
    enabled: bool = True  # METHOD section 4: LoRA r=8, alpha=8, dropout 0.1 on q/k/v/o


class RFTOptimConfig(OptimConfig):
    lr: float = Field(default=3e-5, gt=0)
    warmup_steps: int = Field(default=0, ge=0)


class RFTTrainConfig(StrictModel):
    max_steps: int = Field(default=100, ge=1, description="sampled batches (each: B prompts x G)")
    max_minutes: float | None = Field(
        default=None, gt=0, description="stop (with a checkpoint) after this much training time"
    )
    prompts_per_step: int = Field(default=2, ge=1, description="prompts per process per step (B)")
    forward_prompts: int | None = Field(
        default=None, ge=1, description="prompts per policy forward (memory); null = all B"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 on GPU, fp32 on CPU"
    )
    device: Literal["auto", "cpu"] = "auto"
    freeze_vision: bool = True
    freeze_language: bool = False
    gradient_checkpointing: bool = False
    lora: RFTLoraConfig = Field(default_factory=RFTLoraConfig)
    seed: int = 0
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads per process")


class RFTOutputConfig(OutputConfig):
    dir: str = "runs/rft"


class RFTConfig(StrictModel):
    """One RFT run: start from an SFT model directory (`model.path`)."""

    model: ModelSource
    data: DataConfig = Field(default_factory=DataConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    optim: RFTOptimConfig = Field(default_factory=RFTOptimConfig)
    train: RFTTrainConfig = Field(default_factory=RFTTrainConfig)
    output: RFTOutputConfig = Field(default_factory=RFTOutputConfig)

    @model_validator(mode="after")
    def _check(self) -> RFTConfig:
        check_trainable(self.data, self.train)
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir)
