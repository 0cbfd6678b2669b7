"""The OpenAI chat subset, mapped onto a planning request and back.

A chat request carries what the model's own prompt carries (`autovla.model.prompts`):

* an optional system (or developer) message: one of the model's own system prompts (dual
  thinking or action only), or none for the model's default;
* one user message with the camera frames and the state line. Frames come as 12
  `image_url` parts (front, front-left, front-right; 4 frames each, oldest first), or 3 videos
  (one per camera, in that order) as `video_url` parts holding an animated PNG/GIF/WebP data
  URL of 4 frames, or as `{"type": "video", "video": [4 frame data URLs]}` parts. The text
  must state speed, acceleration and instruction as the prompt format's state line does
  ("Current speed: 5.000 m/s. Current acceleration: 0.200 m/s^2.\\nInstruction: go
  straight."); any other text (camera labels, the closing sentence) is allowed and ignored.

The answer's text is the model's own answer (think block, action tokens); each choice also
carries the decoded trajectory under the `autovla` key.
"""

from __future__ import annotations

import math
import re
import string
from typing import Any

from autovla.data.schema import DEFAULT_FRAMES, FUTURE_STEPS, INSTRUCTIONS, STANDARD_CAMERAS
from autovla.model.prompts import PromptFormat
from autovla.serve.errors import ServiceError
from autovla.serve.images import DecodeBudget, decode_image, decode_video
from autovla.serve.schema import ChatRequest, ImageUrlPart, TextPart, VideoPart, VideoUrlPart

# Unambiguous (each digit can be matched one way only), so a failed match backtracks linearly.
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


def state_pattern(fmt: PromptFormat) -> re.Pattern[str]:
    """A regex for the format's state line (`user_state`) up to its last field, matched
    against text whose whitespace runs are single spaces (`normalize_text`); case is ignored.

    No part of it repeats whitespace (a space is optional or single), so a search costs about
    the text's length times the pattern's: no run of input can be split many ways."""
    regex = ""
    for literal, name, _spec, _conv in string.Formatter().parse(fmt.user_state):
        if name is None:  # the text after the last field is not required
            break
        words = literal.split()
        regex += " ?" + " ".join(re.escape(w) for w in words) + " ?" if words else " ?"
        if name in ("speed", "accel"):
            regex += f"(?P<{name}>{_NUMBER})"
        elif name == "instruction":
            words = "|".join(" ".join(w.split()) for w in INSTRUCTIONS)
            regex += f"(?P<instruction>{words})"
        else:
            raise ValueError(f"prompt format {fmt.name}: unknown field {{{name}}} in user_state")
    return re.compile(regex, re.IGNORECASE)


def normalize_text(text: str) -> str:
    """Runs of whitespace as single spaces (linear), the form `state_pattern` reads."""
    return " ".join(text.split())


def _example_state(fmt: PromptFormat) -> str:
    return fmt.user_state.format(speed=5.0, accel=0.2, instruction="go straight").strip()


def chat_to_plan(
    req: ChatRequest, fmt: PromptFormat, budget: DecodeBudget
) -> tuple[dict[str, Any], dict[str, list], str | None]:
    """(ego + instruction fields, decoded frames per camera, system kind or None)."""
    system: str | None = None
    msgs = list(req.messages)
    if msgs[0].role in ("system", "developer"):
        text = message_text(msgs[0].content, "messages[0].content", budget)
        system = system_kind(text, fmt)
        msgs = msgs[1:]
        offset = 1
    else:
        offset = 0
    if len(msgs) != 1 or msgs[0].role != "user":
        where = f"messages[{offset + (1 if msgs and msgs[0].role == 'user' else 0)}]"
        raise ServiceError(
            400, where,
            "the model answers one driving scene: send one user message (after an optional "
            "system message), no assistant turns",
            "unsupported_conversation",
        )  # fmt: skip
    user = msgs[0]
    field = f"messages[{offset}].content"
    if isinstance(user.content, str):
        raise ServiceError(
            400, field, "the user message must carry the camera frames as content parts",
            "missing_images",
        )  # fmt: skip
    texts: list[str] = []
    stills: list[tuple[str, str]] = []
    videos: list[tuple[str, Any]] = []
    for j, part in enumerate(user.content):
        where = f"{field}[{j}]"
        if isinstance(part, TextPart):
            check_text(part.text, f"{where}.text", budget)
            texts.append(part.text)
        elif isinstance(part, ImageUrlPart):
            stills.append((f"{where}.image_url.url", part.image_url.url))
        elif isinstance(part, VideoUrlPart):
            videos.append((f"{where}.video_url.url", part.video_url.url))
        elif isinstance(part, VideoPart):
            videos.append((f"{where}.video", part.video))
    n_cams, n_frames = len(STANDARD_CAMERAS), DEFAULT_FRAMES
    if stills and videos:
        raise ServiceError(
            400, field, "send either image parts or video parts, not both", "mixed_media"
        )
    if stills and len(stills) != n_cams * n_frames:
        raise ServiceError(
            400, field,
            f"{len(stills)} images: the model reads {n_cams * n_frames} ({n_cams} cameras "
            f"x {n_frames} frames: front, front-left, front-right, each oldest first)",
            "wrong_image_count",
        )  # fmt: skip
    if videos and len(videos) != n_cams:
        raise ServiceError(
            400, field,
            f"{len(videos)} videos: the model reads {n_cams} (front, front-left, front-right)",
            "wrong_image_count",
        )  # fmt: skip
    if not stills and not videos:
        raise ServiceError(400, field, "no camera frames in the user message", "missing_images")
    state = parse_state(" ".join(texts), field, fmt)  # before any decoding: cheap checks first
    frames: dict[str, list] = {}
    if stills:
        if len(stills) > budget.limits.max_images:
            raise ServiceError(400, field, "too many images", "too_many_images")
        for c, cam in enumerate(STANDARD_CAMERAS):
            chunk = stills[c * n_frames : (c + 1) * n_frames]
            frames[cam] = [decode_image(url, where, budget) for where, url in chunk]
    else:
        for cam, (where, video) in zip(STANDARD_CAMERAS, videos, strict=True):
            if isinstance(video, list):
                if len(video) != n_frames:
                    raise ServiceError(
                        400, where, f"a video must have {n_frames} frames, got {len(video)}",
                        "wrong_frame_count",
                    )  # fmt: skip
                frames[cam] = [
                    decode_image(url, f"{where}[{k}]", budget) for k, url in enumerate(video)
                ]
            else:
                frames[cam] = decode_video(video, where, budget, n_frames)
    return state, frames, system


def check_text(text: str, field: str, budget: DecodeBudget) -> None:
    limit = budget.limits.max_text_chars
    if len(text) > limit:
        raise ServiceError(
            413, field, f"text of {len(text)} characters, at most {limit} are accepted",
            "text_too_long",
        )  # fmt: skip


def message_text(content: Any, field: str, budget: DecodeBudget) -> str:
    if isinstance(content, str):
        text = content
    elif all(isinstance(p, TextPart) for p in content):
        text = "".join(p.text for p in content)
    else:
        raise ServiceError(400, field, "a system message holds text only", "bad_system")
    check_text(text, field, budget)
    return text


def system_kind(text: str, fmt: PromptFormat) -> str:
    t = " ".join(text.split())
    if t == " ".join(fmt.system_dual.split()):
        return "dual"
    if t == " ".join(fmt.system_action_only.split()):
        return "action_only"
    raise ServiceError(
        400, "messages[0].content",
        "the model was trained with its own system prompts only (dual thinking or action "
        "only, see GET /v1/models); omit the system message to use its default",
        "unsupported_system_prompt",
    )  # fmt: skip


def parse_state(text: str, field: str, fmt: PromptFormat) -> dict[str, Any]:
    """Speed, acceleration and instruction from the user text (ServiceError naming `field`
    when it has no state line)."""
    m = state_pattern(fmt).search(normalize_text(text))
    if m is None:
        raise ServiceError(
            400, field,
            "the text must state the ego state and instruction as the model's prompt does, "
            f"e.g. {_example_state(fmt)!r}",
            "missing_state",
        )  # fmt: skip
    groups = m.groupdict()
    speed = float(groups.get("speed") or 0.0)  # the regex admits only numbers
    accel = float(groups.get("accel") or 0.0)
    if not (math.isfinite(speed) and math.isfinite(accel)):
        raise ServiceError(400, field, "speed and acceleration must be finite", "invalid_value")
    raw = groups.get("instruction") or "unknown"
    instruction = " ".join(raw.lower().split())
    return {"ego": {"vx": speed, "ax": accel}, "instruction": instruction}


def reasoning_cap_from_max_tokens(max_tokens: int | None, field: str) -> int | None:
    """max_tokens counts the tokens the model chooses: the mode token, the reasoning and the 10
    action tokens. None keeps the server's cap."""
    if max_tokens is None:
        return None
    floor = FUTURE_STEPS + 2
    if max_tokens < floor:
        raise ServiceError(
            400, field,
            f"{max_tokens} tokens cannot hold an answer: it has {FUTURE_STEPS} action tokens "
            f"plus the mode choice; at least {floor}",
            "max_tokens_too_small",
        )  # fmt: skip
    return max_tokens - FUTURE_STEPS - 1
