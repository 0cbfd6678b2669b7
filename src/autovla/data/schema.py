"""The DrivingSample schema: the contract between data sources, training, evaluation, serving.

Arrays are stored as nested lists of floats so a manifest line is plain JSON; use the
`*_array()` helpers for numpy views. All poses are in the ego frame at the current time
(x forward, y left, heading CCW radians).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autovla.paths import name_problem

Instruction = Literal["turn left", "go straight", "turn right", "unknown"]
INSTRUCTIONS: tuple[str, ...] = ("turn left", "go straight", "turn right", "unknown")

STANDARD_CAMERAS: tuple[str, ...] = ("front", "front_left", "front_right")
OPTIONAL_CAMERAS: tuple[str, ...] = ("back", "back_left", "back_right")
CAMERA_NAMES: tuple[str, ...] = STANDARD_CAMERAS + OPTIONAL_CAMERAS

FUTURE_STEPS = 10  # 5 s at 2 Hz
STEP_SECONDS = 0.5

Pose = tuple[float, float, float]
Point = tuple[float, float]

OBJECT_CLASSES: tuple[str, ...] = (
    "vehicle",
    "pedestrian",
    "bicycle",
    "traffic_cone",
    "barrier",
    "static",
    "generic_object",
)


class _Strict(BaseModel):
    # Finite numbers only: NaN or inf in a manifest is a data bug, not a value.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=False)


class EgoState(_Strict):
    """Current ego motion in the ego frame (m/s, m/s^2)."""

    vx: float
    vy: float = 0.0
    ax: float = 0.0
    ay: float = 0.0

    @property
    def speed(self) -> float:
        return float(np.hypot(self.vx, self.vy))

    @property
    def accel(self) -> float:
        return float(np.hypot(self.ax, self.ay))


class SceneObject(_Strict):
    """One object of the scene at the current time, in the ego frame."""

    id: str
    kind: str = Field(description="one of OBJECT_CLASSES")
    box: tuple[float, float, float, float, float] = Field(
        description="x, y, heading, length, width (centre of the box)"
    )
    velocity: Point = (0.0, 0.0)
    lane_relation: str | None = Field(
        default=None, description="e.g. same_lane_ahead, left_lane, oncoming, crossing"
    )
    behaviour: str | None = Field(default=None, description="e.g. braking, stopped, cutting_in")
    future: list[Pose] | None = Field(
        default=None, description="future centre poses at 0.5 s steps (ground truth)"
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in OBJECT_CLASSES:
            raise ValueError(f"unknown object kind {v!r}; valid: {', '.join(OBJECT_CLASSES)}")
        return v

    @field_validator("box")
    @classmethod
    def _positive_size(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if v[3] <= 0 or v[4] <= 0:
            raise ValueError(f"box length and width must be positive, got {v[3]} x {v[4]}")
        return v


class SceneFacts(_Strict):
    """Structured facts about the scene, used for reasoning text and metrics."""

    objects: list[SceneObject] = Field(default_factory=list)
    traffic_light: Literal["red", "yellow", "green", "none"] | None = None
    traffic_light_distance: float | None = None
    road: str | None = Field(default=None, description="e.g. straight, curve, intersection")
    lanes: int | None = Field(default=None, ge=1, description="lanes in the ego direction")
    ego_lane: int | None = Field(default=None, ge=0, description="0 = rightmost lane")
    speed_limit: float | None = Field(default=None, gt=0)
    lighting: str | None = Field(default=None, description="e.g. day, dusk, night")
    notes: list[str] = Field(default_factory=list)


class Preference(_Strict):
    """Rated trajectories (Waymo E2E rater feedback): positions at `hz`, ego frame."""

    trajectories: list[list[Point]]
    scores: list[float]
    hz: float = 4.0
    cluster: str | None = None

    @model_validator(mode="after")
    def _same_count(self) -> Preference:
        if len(self.trajectories) != len(self.scores):
            raise ValueError(f"{len(self.trajectories)} trajectories but {len(self.scores)} scores")
        return self


class DrivingSample(_Strict):
    """One planning problem: cameras, ego state and instruction in; a 5 s plan out."""

    id: str = Field(min_length=1)
    source: str = Field(min_length=1, description="synthetic, navsim, nuscenes, waymo, ...")
    split: str = Field(min_length=1)
    cameras: dict[str, list[str]] = Field(
        description="camera name -> image paths relative to the dataset root, oldest first"
    )
    ego: EgoState
    instruction: Instruction
    history: list[Pose] = Field(description="past poses, oldest first, ego frame")
    future: list[Pose] | None = Field(default=None, description="10 poses at 0.5 s, ego frame")
    reasoning: str | None = None
    meta_action: str | None = None
    scenario_type: str | None = None
    complex: bool | None = None
    scene: SceneFacts | None = None
    scoring: str | None = Field(
        default=None, description="path (relative to the dataset root) of scoring data"
    )
    preference: Preference | None = None
    meta: dict[str, Any] = Field(default_factory=dict, description="source-specific extras")

    @field_validator("id")
    @classmethod
    def _plain_id(cls, v: str) -> str:
        problem = name_problem(v)
        if problem is not None:  # ids become file names (plots, caches, reports)
            raise ValueError(f"id {problem}; an id must be usable as a file name")
        return v

    @field_validator("cameras")
    @classmethod
    def _cameras(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        if not v:
            raise ValueError("at least one camera is required")
        for name, frames in v.items():
            if name not in CAMERA_NAMES:
                raise ValueError(f"unknown camera {name!r}; valid: {', '.join(CAMERA_NAMES)}")
            if not frames:
                raise ValueError(f"camera {name!r} has no frames")
        counts = {len(f) for f in v.values()}
        if len(counts) > 1:
            raise ValueError(f"cameras have different frame counts: {sorted(counts)}")
        return v

    @field_validator("future")
    @classmethod
    def _future_len(cls, v: list[Pose] | None) -> list[Pose] | None:
        if v is not None and len(v) != FUTURE_STEPS:
            raise ValueError(f"future must have {FUTURE_STEPS} poses (0.5 s ... 5 s), got {len(v)}")
        return v

    # --- numpy views -------------------------------------------------------------------
    def history_array(self) -> np.ndarray:
        return np.asarray(self.history, dtype=np.float64).reshape(-1, 3)

    def future_array(self) -> np.ndarray:
        if self.future is None:
            raise ValueError(f"sample {self.id!r} has no future (an inference-only sample)")
        return np.asarray(self.future, dtype=np.float64).reshape(-1, 3)

    @property
    def camera_names(self) -> list[str]:
        return list(self.cameras)

    @property
    def num_frames(self) -> int:
        return len(next(iter(self.cameras.values())))

    def without_answer(self) -> DrivingSample:
        """The planner's view: everything but the ground truth (future, reasoning, label)."""
        return self.model_copy(
            update={"future": None, "reasoning": None, "meta_action": None, "preference": None}
        )


def round_poses(arr: np.ndarray, decimals: int = 4) -> list[Pose]:
    """Poses as JSON-friendly tuples, rounded so manifests stay compact (0.1 mm, 1e-4 rad)."""
    a = np.round(np.asarray(arr, dtype=np.float64), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return [tuple(float(x) for x in row) for row in a]
