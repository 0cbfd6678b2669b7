"""The RFT (GRPO) stage's config sections and its run config; see `train/config.py` for the
sections every stage shares. RFT's defaults differ where docs/method.md section 4 says so:
LoRA on, lr 3e-5, no warm-up. The GRPO and reward sections default to the paper's choices;
each alternative is documented in its field's description.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autovla.config import StrictModel
from autovla.train.config import RunConfig
from autovla.train.rewards import RewardTerm, build_terms


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
    advantage_scaling: Literal["group", "batch", "none"] = Field(
        default="group",
        description="what divides the group-centred rewards: group = the group's reward std "
        "(paper); batch = the std of every reward of the step; none = nothing (Dr. GRPO)",
    )
    loss_normalisation: Literal["sequence", "token", "constant"] = Field(
        default="sequence",
        description="sequence = mean over each completion's tokens, then over completions "
        "(paper); token = mean over every token of the batch; constant = token sum divided "
        "by completions x constant_tokens (Dr. GRPO)",
    )
    constant_tokens: int = Field(
        default=256,
        ge=1,
        description="tokens per completion that loss_normalisation 'constant' divides by "
        "(Dr. GRPO: the generation budget); it only scales the step size",
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

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "scale_advantages" in data:
            raise ValueError(
                "grpo.scale_advantages was replaced by grpo.advantage_scaling "
                "(true -> group, false -> none)"
            )
        return data


class RewardFunctionConfig(BaseModel):
    """One reward term: a function by name, its weight, and its own keyword parameters
    (any other key, e.g. `k` and `c` of reasoning_length)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field(description="registered reward (pdms | ade | closed_loop | "
                      "reasoning_length) or module:function (needs reward.allow_code)")  # fmt: skip
    weight: float = Field(default=1.0, allow_inf_nan=False)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _paper_rewards() -> list[RewardFunctionConfig]:
    # docs/method.md section 4: r = 10 * (PDMS - 0.3 * sigmoid(0.002 * (len - 400)))
    return [
        RewardFunctionConfig(name="pdms", weight=1.0),
        RewardFunctionConfig(name="reasoning_length", weight=-0.3, k=0.002, c=400.0),
    ]


class RewardConfig(StrictModel):
    """total = scale * sum(weight * value) over the terms that scored a completion."""

    functions: list[RewardFunctionConfig] = Field(
        default_factory=_paper_rewards,
        description="reward terms; each returns one value per completion, NaN if it cannot score",
    )
    scale: float = Field(
        default=10.0, gt=0, allow_inf_nan=False, description="s: multiplies the weighted sum"
    )
    allow_code: bool = Field(
        default=False,
        description="allow module:function rewards; importing one runs that module's code",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        old = ("driving_score", "penalty_weight", "penalty_k", "penalty_c")
        if isinstance(data, dict) and any(k in data for k in old):
            raise ValueError(
                f"reward.{'/'.join(k for k in old if k in data)} were replaced by "
                "reward.functions, e.g. [{name: pdms, weight: 1.0}, {name: reasoning_length, "
                "weight: -0.3, k: 0.002, c: 400}]; the scale now multiplies the penalty too "
                "(old penalty_weight w = new weight -w / scale)"
            )
        return data

    @model_validator(mode="after")
    def _check_terms(self) -> RewardConfig:
        self.terms()
        return self

    def terms(self) -> list[RewardTerm]:
        """The checked terms (imports module:function rewards, when allowed)."""
        return build_terms([(f.name, f.weight, f.params) for f in self.functions], self.allow_code)


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
