"""Request and answer models of the service, published at /openapi.json.

`PlanRequest` is a DrivingSample as a caller has it: the same `ego`, `instruction` and
`history` types (from `autovla.data.schema`), and `cameras` with the three cameras the model
reads, each exactly 4 frames, oldest first, as base64 JPEG/PNG (or data URLs) instead of
paths. The chat models are the subset of OpenAI's chat completions the model can answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autovla.data.schema import DEFAULT_FRAMES, EgoState, Instruction, Pose
from autovla.model.planner import ActionChoice, PlanMode
from autovla.model.prompts import Mode
from autovla.paths import name_problem

# Static bounds on list and string fields, far above any valid request: a body of many items or
# one long string is refused at its first excess item with one error, not one per item. The
# configurable limits (`ServeLimits`: max_text_chars, max_json_items, ...) are tighter.
MAX_NAME_CHARS = 256
MAX_HISTORY = 64  # past poses (the model's samples have 4)
MAX_MESSAGES = 8  # the model answers one system and one user message
MAX_PARTS = 64  # content parts of a message; frames of a video part
MAX_TEXT_CHARS = 65_536


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


ImageData = Annotated[
    str, Field(min_length=1, description="base64 JPEG or PNG, or a data:image/...;base64 URL")
]
Frames = Annotated[
    list[ImageData],
    Field(
        min_length=DEFAULT_FRAMES,
        max_length=DEFAULT_FRAMES,
        description=f"{DEFAULT_FRAMES} frames at 2 Hz, oldest first (the last is now)",
    ),
]


class CameraFrames(_Request):
    """The three cameras the model reads (the standard camera names of a DrivingSample)."""

    front: Frames
    front_left: Frames
    front_right: Frames


class PlanOptionsIn(_Request):
    mode: PlanMode = Field("auto", description="auto: the model decides; or force fast / slow")
    action_choice: ActionChoice = Field(
        "argmax", description="greedy action tokens: argmax, or expected (see docs/serve.md)"
    )
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(
        None, ge=0, lt=2**63, description="sampling seed; a seeded request is planned alone"
    )
    num_samples: int = Field(1, ge=1, description="plans for this sample")
    max_reasoning_tokens: int | None = Field(
        None, ge=1, description="cap on the chain of thought (at most the server's cap)"
    )


class PlanRequest(PlanOptionsIn):
    """One planning problem: cameras, ego state and instruction in; 10 poses out."""

    id: str | None = Field(
        None, max_length=MAX_NAME_CHARS, description="echoed in the answer; a plain name"
    )
    cameras: CameraFrames
    ego: EgoState
    instruction: Instruction
    history: list[Pose] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description="past poses, oldest first, ego frame: 4 at 2 Hz ending at (0, 0, 0); "
        "optional (omitted: the current velocity held for 1.5 s; the prompt does not read it)",
    )

    @field_validator("id")
    @classmethod
    def _plain_id(cls, v: str | None) -> str | None:
        problem = name_problem(v) if v is not None else None
        if problem is not None:
            raise ValueError(f"id {problem}")
        return v


class Plan(BaseModel):
    trajectory: list[Pose] = Field(description="10 poses (x, y, heading) at 0.5 s ... 5 s")
    mode: Mode
    reasoning: str | None
    action_ids: list[int] = Field(description="codebook indices of the 10 action tokens")
    text: str = Field(description="the model's whole answer")
    num_generated_tokens: int


class PlanResponse(BaseModel):
    id: str
    plans: list[Plan] = Field(description="num_samples plans, the first is the answer")
    batch_size: int = Field(description="requests planned together with this one")
    timings: dict[str, float] = Field(
        description="seconds: decode (images), queue, plan (the batch), the planner's "
        "inputs / vision / prefill / decode, total (server side)"
    )


# --- OpenAI chat subset ----------------------------------------------------------------------
class _Url(_Request):
    url: str
    detail: str | None = Field(None, max_length=MAX_NAME_CHARS)


class TextPart(_Request):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT_CHARS, description="at most the server's max_text_chars")


class ImageUrlPart(_Request):
    type: Literal["image_url"]
    image_url: _Url


class VideoUrlPart(_Request):
    type: Literal["video_url"]
    video_url: _Url


class VideoPart(_Request):
    type: Literal["video"]
    video: list[str] = Field(max_length=MAX_PARTS, description="frame data URLs, oldest first")


ContentPart = Annotated[
    TextPart | ImageUrlPart | VideoUrlPart | VideoPart, Field(discriminator="type")
]


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: (
        Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
        | Annotated[list[ContentPart], Field(max_length=MAX_PARTS)]
    )
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)


class ChatRequest(_Request):
    """The chat-completions parameters this model can honour; any other is a 400."""

    model: str = Field(max_length=MAX_NAME_CHARS)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, description="tokens the model may generate")
    max_completion_tokens: int | None = Field(None, ge=1, description="same as max_tokens")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: Literal[False] | None = Field(None, description="streaming is not supported")
    user: str | None = Field(None, max_length=MAX_NAME_CHARS)
    mode: PlanMode = Field("auto", description="extension: force fast or slow thinking")
    action_choice: ActionChoice = Field("argmax", description="extension: greedy action choice")


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    finish_reason: Literal["stop"] = "stop"
    autovla: dict[str, Any] = Field(description="extension: trajectory, mode, action_ids")


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: dict[str, int] | None = None
