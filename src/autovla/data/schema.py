"""The DrivingSample schema: the contract between data sources, training, evaluation, serving.

Arrays are stored as nested lists of floats so a manifest line is plain JSON; use the
`*_array()` helpers for numpy views. All poses are in the ego frame at the current time
(x forward, y left, heading CCW radians).

Beyond types, a sample must be usable by the method (docs/method.md sections 1-3) and
plausible, so a broken converter or a hostile file fails here, with the field named, and not
deep inside training. The documented limits (docs/data.md, "Limits"):
* the three standard cameras (front, front_left, front_right), at most MAX_FRAMES frames each;
* history: exactly HISTORY_POSES poses at 2 Hz, oldest first, the last the current pose
  (0, 0, 0);
* every number finite (meta included); |speed| <= MAX_SPEED, |acceleration| <= MAX_ACCEL;
  every position within MAX_RANGE of the ego; object sizes <= MAX_OBJECT_SIZE;
* every string at most MAX_TEXT_CHARS characters (reasoning included), `meta` nested at most
  MAX_META_DEPTH deep.
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
DEFAULT_FRAMES = 4  # per camera, 2 Hz, oldest first
HISTORY_POSES = 4  # -1.5, -1.0, -0.5, 0 s: the last is the current pose (0, 0, 0)

# Plausibility and size limits (docs/data.md, "Limits"): far beyond real driving, far below
# what would exhaust memory or make a number meaningless.
MAX_SPEED = 70.0  # m/s (252 km/h), ego and objects
MAX_ACCEL = 50.0  # m/s^2 (5 g)
MAX_RANGE = 1000.0  # m, any position in the ego frame
MAX_OBJECT_SIZE = 100.0  # m, box length or width
MAX_FRAMES = 16  # per camera
MAX_TEXT_CHARS = 20_000  # any string field; ~5k tokens of reasoning
MAX_META_DEPTH = 8  # containers nested inside `meta`
ORIGIN_TOL = 1e-3  # m / rad: the last history pose is the current one

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
    # Finite numbers only: NaN or inf in a manifest is a data bug, not a value. Strings are
    # bounded: a 50 MB "reasoning" must fail here, not inside the tokenizer.
    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, frozen=False, str_max_length=MAX_TEXT_CHARS
    )


def _check_positions(poses: Any, what: str) -> None:
    """Positions (the first two numbers of each pose) within MAX_RANGE of the ego."""
    for i, p in enumerate(poses):
        if p is not None and (abs(p[0]) > MAX_RANGE or abs(p[1]) > MAX_RANGE):
            raise ValueError(
                f"{what} {i} at ({p[0]:g}, {p[1]:g}) is more than {MAX_RANGE:g} m from the ego"
            )


def _check_kind(v: str) -> str:
    if v not in OBJECT_CLASSES:
        raise ValueError(f"unknown object kind {v!r}; valid: {', '.join(OBJECT_CLASSES)}")
    return v


def check_meta(value: Any) -> None:
    """`meta` holds JSON only: finite numbers, strings of at most MAX_TEXT_CHARS, containers
    nested at most MAX_META_DEPTH deep (iterative, so a deep value cannot exhaust the stack)."""
    stack: list[tuple[Any, str, int]] = [(value, "meta", 0)]
    while stack:
        v, where, depth = stack.pop()
        if depth > MAX_META_DEPTH:
            raise ValueError(f"{where} is nested more than {MAX_META_DEPTH} deep")
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise ValueError(f"{where} has a non-string key {k!r}")
                stack.append((x, f"{where}.{k}", depth + 1))
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{where}.{i}", depth + 1) for i, x in enumerate(v))
        elif isinstance(v, float):
            if not np.isfinite(v):
                raise ValueError(f"{where} is {v}; numbers must be finite")
        elif isinstance(v, str):
            if len(v) > MAX_TEXT_CHARS:
                raise ValueError(f"{where} has {len(v)} characters (at most {MAX_TEXT_CHARS})")
        elif not (v is None or isinstance(v, (bool, int))):
            raise ValueError(f"{where} is a {type(v).__name__}; meta holds JSON values only")


class EgoState(_Strict):
    """Current ego motion in the ego frame (m/s, m/s^2)."""

    vx: float
    vy: float = 0.0
    ax: float = 0.0
    ay: float = 0.0

    @model_validator(mode="after")
    def _plausible(self) -> EgoState:
        if self.speed > MAX_SPEED:
            raise ValueError(f"speed {self.speed:g} m/s is above {MAX_SPEED:g} m/s")
        if self.accel > MAX_ACCEL:
            raise ValueError(f"acceleration {self.accel:g} m/s^2 is above {MAX_ACCEL:g} m/s^2")
        return self

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
    future: list[Pose | None] | None = Field(
        default=None,
        description="future centre poses at 0.5 s steps (ground truth); null at a step where "
        "the object is not annotated",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return _check_kind(v)

    @field_validator("box")
    @classmethod
    def _positive_size(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if v[3] <= 0 or v[4] <= 0:
            raise ValueError(f"box length and width must be positive, got {v[3]} x {v[4]}")
        if v[3] > MAX_OBJECT_SIZE or v[4] > MAX_OBJECT_SIZE:
            raise ValueError(f"box {v[3]:g} x {v[4]:g} m is larger than {MAX_OBJECT_SIZE:g} m")
        _check_positions([v], "box")
        return v

    @field_validator("velocity")
    @classmethod
    def _plausible_velocity(cls, v: Point) -> Point:
        if float(np.hypot(*v)) > MAX_SPEED:
            raise ValueError(f"speed {float(np.hypot(*v)):g} m/s is above {MAX_SPEED:g} m/s")
        return v

    @field_validator("future")
    @classmethod
    def _future_range(cls, v: list[Pose | None] | None) -> list[Pose | None] | None:
        if v is not None:
            _check_positions(v, "pose")
        return v

    def future_poses(self, steps: int) -> list[Pose | None]:
        """The first `steps` future poses, None where the object is not annotated."""
        fut = list(self.future or [])[:steps]
        return fut + [None] * (steps - len(fut))


class FutureObject(_Strict):
    """An object not annotated now that is annotated at a later step (it enters the scene):
    the BEV collision metric counts every object present at each future time."""

    id: str
    kind: str = Field(description="one of OBJECT_CLASSES")
    size: tuple[float, float] = Field(description="length, width (m)")
    future: list[Pose | None] = Field(
        description="centre poses at 0.5 s steps, ego frame; null where not annotated"
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return _check_kind(v)

    @field_validator("size")
    @classmethod
    def _size(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= MAX_OBJECT_SIZE and 0 < v[1] <= MAX_OBJECT_SIZE):
            raise ValueError(f"size must be in (0, {MAX_OBJECT_SIZE:g}] m, got {v[0]} x {v[1]}")
        return v

    @field_validator("future")
    @classmethod
    def _future_range(cls, v: list[Pose | None]) -> list[Pose | None]:
        _check_positions(v, "pose")
        return v


class SceneFacts(_Strict):
    """Structured facts about the scene, used for reasoning text and metrics."""

    objects: list[SceneObject] = Field(default_factory=list)
    future_objects: list[FutureObject] = Field(
        default_factory=list, description="objects that appear only after the current time"
    )
    objects_tracked: bool = Field(
        default=False,
        description="every object annotated at each future step is recorded (`future` with "
        "null where an object is not annotated, `future_objects`): the BEV collision metric "
        "applies to this sample",
    )
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
        if not 0 < self.hz <= 100:
            raise ValueError(f"hz must be in (0, 100], got {self.hz}")
        for i, (traj, score) in enumerate(zip(self.trajectories, self.scores, strict=True)):
            if not 0 <= score <= 10:
                raise ValueError(f"score {i} is {score}; rated scores are 0-10")
            _check_positions(traj, f"trajectory {i} point")
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
        for name, frames in v.items():
            if name not in CAMERA_NAMES:
                raise ValueError(f"unknown camera {name!r}; valid: {', '.join(CAMERA_NAMES)}")
            if not frames:
                raise ValueError(f"camera {name!r} has no frames")
            if len(frames) > MAX_FRAMES:
                raise ValueError(f"camera {name!r} has {len(frames)} frames (at most {MAX_FRAMES})")
        # the model reads the three front cameras (docs/method.md section 1)
        missing = [c for c in STANDARD_CAMERAS if c not in v]
        if missing:
            raise ValueError(
                f"missing camera(s) {', '.join(missing)}; required: {', '.join(STANDARD_CAMERAS)}"
            )
        counts = {len(f) for f in v.values()}
        if len(counts) > 1:
            raise ValueError(f"cameras have different frame counts: {sorted(counts)}")
        return v

    @field_validator("history")
    @classmethod
    def _history(cls, v: list[Pose]) -> list[Pose]:
        if len(v) != HISTORY_POSES:
            raise ValueError(
                f"history must have {HISTORY_POSES} poses (-1.5, -1.0, -0.5, 0 s at 2 Hz), "
                f"got {len(v)}"
            )
        if max(abs(x) for x in v[-1]) > ORIGIN_TOL:
            raise ValueError(f"the last history pose is the current one, (0, 0, 0); got {v[-1]}")
        _check_positions(v, "pose")
        return v

    @field_validator("future")
    @classmethod
    def _future_len(cls, v: list[Pose] | None) -> list[Pose] | None:
        if v is not None and len(v) != FUTURE_STEPS:
            raise ValueError(f"future must have {FUTURE_STEPS} poses (0.5 s ... 5 s), got {len(v)}")
        if v is not None:
            _check_positions(v, "pose")
        return v

    @field_validator("meta")
    @classmethod
    def _meta(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_meta(v)
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
