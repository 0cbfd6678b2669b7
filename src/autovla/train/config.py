"""The typed training configs: shared sections, plus one section per stage. CPU defaults.

    model / data / optim / train / output    every stage (RunConfig)
    sft + val                                 supervised fine-tuning (SFTConfig)
    grpo + reward                             reinforcement fine-tuning (RFTConfig, rft_config.py)

A stage changes the defaults of the shared sections through `stage_defaults` (RFT: LoRA on,
lr 3e-5, no warm-up; docs/method.md section 4), never through a parallel class hierarchy.
YAML recipes in `configs/` override the defaults; `autovla train sft|rft --config F
key.sub=value` overrides further. Unknown keys, NaN and infinities are errors (StrictModel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from autovla.config import StrictModel, deep_merge
from autovla.model.prompts import SystemKind

# numpy's legacy seeding (which accelerate's set_seed calls) takes 0 <= seed < 2**32
Seed = Annotated[int, Field(ge=0, lt=2**32, description="random seed, 0 <= seed < 2**32")]
Beta = Annotated[float, Field(ge=0, lt=1)]


class ModelSource(StrictModel):
    """Where the model comes from. `path` wins over `preset`, so `model.path=...` on the
    command line replaces a recipe's preset:

    * `path` is an AutoVLA directory: fine-tune it (`codebook`, if given, must be its codebook);
    * `path` is a pretrained Qwen2.5-VL directory or hub id (no autovla.json): build a fresh
      AutoVLA from those weights with `codebook` and the preset's pixel budget (`preset`,
      default qwen2.5-vl-3b);
    * no `path`: build `preset` and `codebook`. A preset with published weights
      (qwen2.5-vl-3b) loads them from the local Hugging Face cache, and is an error when they
      are not there unless `random_weights` (random weights on purpose: benchmarks); the small
      presets (tiny, small) have random weights by design.
    """

    path: str | None = Field(
        default=None,
        description="AutoVLA model directory to fine-tune, or pretrained Qwen2.5-VL weights "
        "(directory or hub id) to build from with `codebook`; wins over `preset`",
    )
    preset: str | None = Field(default=None, description="build a fresh model: tiny|small|...")
    codebook: str | None = Field(
        default=None,
        description="codebook file; builds the model's action tokens (preset or pretrained "
        "weights), or must match the codebook of an AutoVLA `path`",
    )
    seed: Seed = 0
    action_init: Literal["mean", "geometry"] = Field(
        default="mean",
        description="new action-token rows: mean of the existing rows, or a geometric prior "
        "from the codebook (fresh presets only)",
    )
    number_init: bool = Field(
        default=False,
        description="number tokens start with rows that encode their value (fresh presets with "
        "a random-weight tokenizer only)",
    )
    random_weights: bool = Field(
        default=False,
        description="build the preset with random weights even where it has published ones "
        "(qwen2.5-vl-3b): benchmarks only; without it a missing download is an error",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if self.path is None and self.preset is None:
            raise ValueError("set model.path (an AutoVLA directory) or model.preset + codebook")
        if self.path is None and self.codebook is None:
            raise ValueError("model.preset needs model.codebook (the action codebook file)")
        if self.path is not None and self.random_weights:
            raise ValueError(
                "model.random_weights builds model.preset with random weights; it cannot be "
                "combined with model.path (drop one)"
            )
        return self


class DatasetEntry(StrictModel):
    path: str = Field(description="dataset directory (manifest*.jsonl) or a manifest file")
    weight: float = Field(default=1.0, gt=0, description="relative sampling weight")
    split: str | None = Field(default="train", description="split to read; null = all")
    scene_filter: str | None = Field(
        default=None,
        description="keep only these scenes: a file of scene tokens (or sample ids), one per "
        "line, or a NAVSIM scene-filter YAML with a `tokens` list (e.g. navtrain.yaml)",
    )


class DataConfig(StrictModel):
    datasets: list[DatasetEntry] = Field(default_factory=list)
    shuffle_buffer: int = Field(default=256, ge=1, description="streaming shuffle window")
    num_workers: int = Field(default=1, ge=0, description="DataLoader workers (decode images)")
    prefetch_factor: int = Field(default=2, ge=1)


class LoraConfig(StrictModel):
    enabled: bool = False
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=8, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


class OptimConfig(StrictModel):
    """AdamW and the schedule: linear warm-up, then x gamma every decay_every steps."""

    lr: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    warmup_steps: int = Field(default=500, ge=0)
    decay_every: int = Field(default=2000, ge=1, description="multiply lr by gamma every N steps")
    gamma: float = Field(default=0.98, gt=0, le=1)
    clip_grad_norm: float | None = Field(default=1.0, gt=0)


class TrainConfig(StrictModel):
    """The loop every stage shares: budget, devices, what is trained, guards."""

    max_steps: int = Field(default=100, ge=1, description="optimiser steps (sft.epochs sets it)")
    max_minutes: float | None = Field(
        default=None, gt=0, description="stop (with a checkpoint) after this much training time"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="auto: bf16 autocast on GPU, none on CPU; fp32: no autocast and the frozen "
        "weights in float32 too (otherwise they keep the dtype they load in, bf16 for the 3B "
        "model); trained weights are float32 always",
    )
    device: Literal["auto", "cpu"] = "auto"
    freeze_vision: bool = True
    freeze_language: bool = False
    gradient_checkpointing: bool = False
    lora: LoraConfig = Field(default_factory=LoraConfig)
    seed: Seed = 0
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads per process")
    max_bad_steps: int = Field(
        default=0,
        ge=0,
        description="optimiser updates with a non-finite loss or gradient that are skipped "
        "(weights untouched) before the run stops with an error; 0 = stop at the first",
    )


class OutputConfig(StrictModel):
    dir: str = "runs/sft"
    save_every: int = Field(default=0, ge=0, description="checkpoint every N steps; 0 = end only")
    keep_last: int = Field(default=2, ge=1, description="checkpoints to keep")
    log_every: int = Field(default=10, ge=1)
    tensorboard: bool = True
    progress: bool = True
    resume: bool = Field(default=True, description="continue from the last checkpoint in dir")

    @field_validator("dir")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("output.dir is empty: name the folder the run writes to")
        return v


class RunConfig(StrictModel):
    """What every training stage shares; a stage adds its own sections."""

    stage: ClassVar[str]
    stage_defaults: ClassVar[dict[str, Any]] = {}

    model: ModelSource
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _stage_defaults(cls, data: Any) -> Any:
        return deep_merge(cls.stage_defaults, data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _check_trainable(self) -> RunConfig:
        if not self.data.datasets:
            raise ValueError("data.datasets is empty: give at least one training dataset")
        t = self.train
        if t.freeze_vision and t.freeze_language and not t.lora.enabled:
            raise ValueError(
                "train.freeze_vision and train.freeze_language both set without LoRA: "
                "nothing would be trained"
            )
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir)


class SFTSection(StrictModel):
    """Supervised fine-tuning: the answers trained on, the batch, the loss weights."""

    variant: SystemKind = Field(
        default="dual", description="dual thinking, or action-only (no reasoning at all)"
    )
    epochs: float | None = Field(default=None, gt=0, description="if set, sets train.max_steps")
    batch_size: int = Field(default=1, ge=1, description="per process, per micro-batch")
    grad_accum: int = Field(default=4, ge=1, description="micro-batches per optimiser step")
    lambda_cot: float = Field(
        default=40.0, gt=0, description="weight of the samples trained with their reasoning"
    )
    lambda_a: float = Field(default=1.0, ge=0, description="weight of the action-token term")
    action_sigma: float = Field(
        default=0.0,
        ge=0,
        description="soft action targets: Gaussian over end-contour distance with this "
        "sigma (m); 0 = plain cross-entropy (the paper)",
    )
    first_action_weight: float = Field(
        default=1.0,
        gt=0,
        description="weight of the first action token (the one that reads the current speed) "
        "within the action term; 1 = the paper",
    )
    fast_share: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="dual only: this share of the samples with reasoning is trained with the "
        "fast answer instead, at weight 1 (a fixed subset, chosen by a hash of the sample id "
        "and train.seed); 0 = the paper",
    )

    @model_validator(mode="after")
    def _fast_share_needs_dual(self) -> SFTSection:
        if self.fast_share > 0 and self.variant != "dual":
            raise ValueError(
                f"sft.fast_share={self.fast_share} needs sft.variant: dual "
                f"(got {self.variant!r}, which trains no reasoning)"
            )
        return self


class ValConfig(StrictModel):
    datasets: list[DatasetEntry] = Field(default_factory=list)
    every: int = Field(default=0, ge=0, description="validate every N optimiser steps; 0 = end")
    max_samples: int = Field(default=32, ge=1)
    batch_size: int = Field(default=8, ge=1)
    at_end: bool = True
    action_choice: Literal["argmax", "expected"] = Field(
        default="argmax",
        description="greedy action tokens of the validation plans (autovla.model.planner)",
    )


class SFTConfig(RunConfig):
    """One SFT run."""

    stage: ClassVar[str] = "sft"

    sft: SFTSection = Field(default_factory=SFTSection)
    val: ValConfig = Field(default_factory=ValConfig)
