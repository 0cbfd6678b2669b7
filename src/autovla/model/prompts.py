"""The prompt, in one place: system prompts, the user turn and the assistant answer.

The wording lives in a versioned template file (`prompt_formats/<name>.yaml`), loaded into a
`PromptFormat`; a model directory stores the format it was trained with. Training and
inference build their text with the same functions below.

Answer structure (docs/method.md section 2):

    think_open + (fast_line | slow_line + reasoning) + think_close
    + action_open + <action_a1>...<action_a10> + action_close

A format with `answer_kind: waypoints` (the paper's text-waypoint ablation, docs/method.md
section 8) writes the ten poses as text in the answer block instead of action tokens:

    ... + action_open + " (1.25, 0.00) (2.51, 0.01) ... (x10, y10)" + action_close

x forward and y left in metres with two decimals (`render_waypoints`); `parse_waypoints` reads
them back and says why when it cannot.
"""

from __future__ import annotations

import functools
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from autovla.config import ConfigError, StrictModel, parse_yaml, short_repr, validation_message
from autovla.data.schema import FUTURE_STEPS, STANDARD_CAMERAS, DrivingSample

Mode = Literal["fast", "slow"]
SystemKind = Literal["dual", "action_only"]
AnswerKind = Literal["action_tokens", "waypoints"]

FORMATS_DIR = Path(__file__).parent / "prompt_formats"
DEFAULT_FORMAT = "autovla-v1"
FORMAT_FILE = "prompt_format.yaml"  # name inside a model directory

_ACTION_RE = re.compile(r"<action_(\d+)>")
MAX_FORMAT_BYTES = 2**20  # a format file is a few kilobytes


class PromptFormatError(ValueError):
    """A prompt format (file) that cannot be used; the message names the file and field."""


# --- the user-state template -----------------------------------------------------------------
# `user_state` is text with placeholders filled from each sample. It is data (a format file may
# come from elsewhere), so it is not handed to str.format, which follows attributes and indexes
# (`{instruction.__class__}`) and honours any width (`{speed:>100000000}`): only the names
# below, with a plain format spec of bounded width and precision, are allowed.
USER_STATE_FIELDS: dict[str, type] = {"speed": float, "accel": float, "instruction": str}
MAX_WIDTH = 40
MAX_PRECISION = 12
_SPEC = re.compile(
    r"(?:[^{}]?[<>^=])?[-+ ]?0?(?P<width>\d+)?[,_]?"  # [[fill]align][sign][0][width][,]
    r"(?:\.(?P<precision>\d+))?(?P<type>[eEfFgG%s]?)"  # [.precision][type]
)
_TYPES = {float: "eEfFgG%", str: "s"}


@functools.lru_cache(maxsize=64)
def parse_user_state(template: str) -> tuple[tuple[str, str | None, str], ...]:
    """(literal text, field name or None, format spec) pieces of a user-state template, or
    PromptFormatError naming the placeholder that is not allowed."""
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as e:  # a lone "{" or "}"
        raise PromptFormatError(f"{e} (write {{{{ and }}}} for literal braces)") from None
    out = []
    for literal, name, spec, conversion in pieces:
        if name is None:
            out.append((literal, None, ""))
            continue
        where = f"user_state placeholder {short_repr('{' + name + '}')}"
        if name not in USER_STATE_FIELDS:
            allowed = ", ".join(f"{{{k}}}" for k in USER_STATE_FIELDS)
            raise PromptFormatError(f"{where}: only {allowed} are allowed")
        if conversion is not None:
            raise PromptFormatError(f"{where}: conversions (!r, !s, !a) are not allowed")
        m = _SPEC.fullmatch(spec or "")
        if m is None:
            raise PromptFormatError(
                f"{where}: format spec {short_repr(spec)} is not [align][width][.precision][type]"
            )
        width, precision = m["width"] or "0", m["precision"] or "0"
        # compared as text first: int() of thousands of digits is itself refused by Python
        if (
            len(width) > 3
            or int(width) > MAX_WIDTH
            or len(precision) > 3
            or int(precision) > MAX_PRECISION
        ):
            raise PromptFormatError(
                f"{where}: width at most {MAX_WIDTH}, precision at most {MAX_PRECISION}"
            )
        kind = USER_STATE_FIELDS[name]
        if m["type"] and m["type"] not in _TYPES[kind]:
            what = "text" if kind is str else "a number"
            raise PromptFormatError(f"{where}: type {m['type']!r} cannot format {what}")
        try:
            format(kind(), spec or "")  # e.g. a sign or "," is not allowed for text
        except ValueError as e:
            raise PromptFormatError(f"{where}: {e}") from None
        out.append((literal, name, spec or ""))
    return tuple(out)


def render_user_state(template: str, speed: float, accel: float, instruction: str) -> str:
    """Fill a user-state template (checked by `parse_user_state`) with one sample's values."""
    values = {"speed": float(speed), "accel": float(accel), "instruction": str(instruction)}
    return "".join(
        literal + ("" if name is None else format(values[name], spec))
        for literal, name, spec in parse_user_state(template)
    )


class PromptFormat(StrictModel):
    """All text of the prompt and the answer; see prompt_formats/autovla-v1.yaml."""

    name: str
    version: int = Field(ge=1)
    system_dual: str
    system_action_only: str
    user_intro: str
    camera_labels: dict[str, str]
    camera_separator: str = "\n"
    user_state: str = Field(description="template with {speed}, {accel}, {instruction}")
    think_open: str
    fast_line: str
    slow_line: str
    think_close: str
    action_open: str
    action_close: str
    structure_tokens: list[str] = Field(default_factory=list)
    max_reasoning_tokens: int = Field(default=512, ge=1)
    answer_kind: AnswerKind = Field(
        default="action_tokens",
        description="what the answer block holds: 10 action tokens, or 10 (x, y) waypoints as text",
    )
    max_waypoint_tokens: int = Field(
        default=160, ge=FUTURE_STEPS, description="generation cap for the waypoint text (tokens)"
    )

    @field_validator("user_state")
    @classmethod
    def _safe_template(cls, v: str) -> str:
        parse_user_state(v)
        return v

    @model_validator(mode="after")
    def _waypoint_close(self) -> PromptFormat:
        # The planner ends the waypoint text when the model starts the close: the close must
        # not begin with a character the waypoints themselves use.
        if self.answer_kind == "waypoints" and (
            not self.action_close or self.action_close[0] in WAYPOINT_CHARS
        ):
            raise ValueError(
                "action_close of a waypoint format must start with a character the waypoints "
                f"do not use (not one of {''.join(sorted(WAYPOINT_CHARS))!r})"
            )
        return self

    # --- files ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path_or_name: str | Path = DEFAULT_FORMAT) -> PromptFormat:
        """Load a format file, a model directory holding one, or a bundled format by name."""
        p = Path(path_or_name)
        if p.is_dir():
            p = p / FORMAT_FILE
        elif not p.exists():
            bundled = FORMATS_DIR / f"{path_or_name}.yaml"
            if not bundled.exists():
                known = ", ".join(sorted(f.stem for f in FORMATS_DIR.glob("*.yaml")))
                raise FileNotFoundError(
                    f"prompt format {str(path_or_name)!r} is neither a file nor a bundled "
                    f"format (bundled: {known})"
                )
            p = bundled
        if not p.is_file():
            raise PromptFormatError(f"{p}: no prompt format file")
        if p.stat().st_size > MAX_FORMAT_BYTES:
            raise PromptFormatError(f"{p}: {p.stat().st_size} bytes is too large for a format")
        try:
            data = parse_yaml(p.read_text(encoding="utf-8"), str(p))
        except UnicodeDecodeError as e:
            raise PromptFormatError(f"{p}: not UTF-8 text (byte offset {e.start})") from None
        except ConfigError as e:
            raise PromptFormatError(str(e)) from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise PromptFormatError(validation_message(e, f"prompt format {p}")) from None

    def save(self, directory: str | Path) -> Path:
        from autovla.io import atomic_open

        path = Path(directory) / FORMAT_FILE
        with atomic_open(path) as f:
            yaml.safe_dump(self.model_dump(), f, sort_keys=False, allow_unicode=True, width=100)
        return path

    # --- mode markers ----------------------------------------------------------------------
    @property
    def fast_marker(self) -> str:
        """The answer prefix that means fast thinking."""
        return self.think_open + self.fast_line

    @property
    def slow_marker(self) -> str:
        """The answer prefix that means slow thinking (the reward's length penalty keys on it)."""
        return self.think_open + self.slow_line

    def mode_of(self, text: str) -> Mode | None:
        if text.startswith(self.slow_marker):
            return "slow"
        if text.startswith(self.fast_marker):
            return "fast"
        return None


def load_format(path_or_name: str | Path | PromptFormat | None = None) -> PromptFormat:
    if isinstance(path_or_name, PromptFormat):
        return path_or_name
    return PromptFormat.load(path_or_name or DEFAULT_FORMAT)


# --- user turn -------------------------------------------------------------------------------
def ordered_cameras(sample: DrivingSample) -> list[str]:
    """Standard cameras first in their fixed order, then any others in schema order."""
    missing = [c for c in STANDARD_CAMERAS if c not in sample.cameras]
    if missing:
        raise ValueError(f"sample {sample.id!r}: field 'cameras' lacks {', '.join(missing)}")
    return list(STANDARD_CAMERAS)


def user_state_text(sample: DrivingSample, fmt: PromptFormat) -> str:
    return render_user_state(
        fmt.user_state, sample.ego.speed, sample.ego.accel, sample.instruction.lower()
    )


def build_messages(
    sample: DrivingSample, fmt: PromptFormat, system: SystemKind = "dual"
) -> list[dict[str, Any]]:
    """Chat messages for one sample; each video is the list of its frame paths (oldest first).

    Frame paths are as stored in the sample (relative to the dataset root); `inputs.load_videos`
    opens them. The answer is not included.
    """
    if system not in ("dual", "action_only"):
        raise ValueError(f"system must be 'dual' or 'action_only', got {system!r}")
    system_text = fmt.system_dual if system == "dual" else fmt.system_action_only
    content: list[dict[str, Any]] = [{"type": "text", "text": fmt.user_intro}]
    for i, cam in enumerate(ordered_cameras(sample)):
        if i:
            content.append({"type": "text", "text": fmt.camera_separator})
        content.append({"type": "text", "text": fmt.camera_labels.get(cam, f"{cam}: ")})
        content.append({"type": "video", "video": list(sample.cameras[cam])})
    content.append({"type": "text", "text": user_state_text(sample, fmt)})
    return [
        {"role": "system", "content": [{"type": "text", "text": system_text}]},
        {"role": "user", "content": content},
    ]


# --- assistant answer ------------------------------------------------------------------------
def _action_text(action_ids: list[int]) -> str:
    from autovla.tokenizer.action import action_token

    return "".join(action_token(int(i)) for i in action_ids)


def mode_prefix(mode: Mode, fmt: PromptFormat) -> str:
    """Answer text that forces a mode (pre-filled before generation)."""
    if mode == "fast":
        return fmt.fast_marker
    if mode == "slow":
        return fmt.slow_marker
    raise ValueError(f"mode must be 'fast' or 'slow', got {mode!r}")


def reasoning_block(reasoning: str) -> str:
    """The chain of thought as it sits between the mode line and think_close."""
    return reasoning.strip() + "\n"


def _answer(body: str, reasoning: str | None, fmt: PromptFormat) -> str:
    if reasoning is not None and reasoning.strip():
        head = fmt.slow_marker + reasoning_block(reasoning)
    else:
        head = fmt.fast_marker
    return head + fmt.think_close + fmt.action_open + body + fmt.action_close


def render_answer(action_ids: list[int], reasoning: str | None, fmt: PromptFormat) -> str:
    """The full assistant answer: fast when reasoning is empty/None, slow otherwise."""
    if fmt.answer_kind != "action_tokens":
        raise ValueError(
            f"prompt format {fmt.name!r} answers with {fmt.answer_kind}, not action tokens "
            "(render_waypoint_answer)"
        )
    return _answer(_action_text(action_ids), reasoning, fmt)


def render_waypoint_answer(xy: Any, reasoning: str | None, fmt: PromptFormat) -> str:
    """The full assistant answer of a waypoint format: the (10, >=2) poses as text."""
    if fmt.answer_kind != "waypoints":
        raise ValueError(f"prompt format {fmt.name!r} answers with {fmt.answer_kind}")
    return _answer(render_waypoints(xy), reasoning, fmt)


def require_action_tokens(fmt: PromptFormat, what: str) -> None:
    """Refuse a waypoint-answer format where only action-token answers are supported."""
    if fmt.answer_kind != "action_tokens":
        raise PromptFormatError(
            f"{what} supports action-token answers only; the model's prompt format "
            f"{fmt.name!r} answers with {fmt.answer_kind}"
        )


def parse_answer(text: str, fmt: PromptFormat) -> tuple[Mode | None, str | None, str]:
    """Split a completion into (mode, reasoning, action_text).

    mode is None when the text starts with neither marker; reasoning is None in fast mode;
    action_text is what follows action_open up to action_close (or the end).
    """
    mode = fmt.mode_of(text)
    reasoning: str | None = None
    body = text
    if mode is not None:
        body = text[len(fmt.slow_marker if mode == "slow" else fmt.fast_marker) :]
    close = fmt.think_close.strip()
    cut = body.find(close) if close else -1
    think_part, rest = (body[:cut], body[cut + len(close) :]) if cut >= 0 else (body, "")
    if mode == "slow":
        reasoning = think_part.strip()
    open_ = fmt.action_open.strip()
    start = rest.find(open_) if open_ else -1
    if start < 0:  # no answer block: take anything that looks like action tokens
        first = text.find("<action_")
        action_text = text[first:] if first >= 0 else ""
    else:
        action_text = rest[start + len(open_) :]
    end_ = fmt.action_close.strip()
    if end_ and end_ in action_text:
        action_text = action_text[: action_text.find(end_)]
    return mode, reasoning, action_text.strip()


def action_ids_from_text(action_text: str) -> list[int]:
    """Codebook indices of the `<action_i>` tokens in a text, in order."""
    return [int(m) for m in _ACTION_RE.findall(action_text)]


# --- text waypoints (answer_kind: waypoints) -------------------------------------------------
WAYPOINT_DECIMALS = 2
# Every character the waypoint text may hold: the planner only lets the model write tokens
# made of these while it writes the waypoints.
WAYPOINT_CHARS = frozenset("0123456789-.,() ")
_NUM = r"-?\d+(?:\.\d+)?"
_POINT_RE = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")


def _number(v: float) -> str:
    r = round(float(v), WAYPOINT_DECIMALS) + 0.0  # + 0.0: no "-0.00"
    return f"{r:.{WAYPOINT_DECIMALS}f}"


def render_waypoints(xy: Any) -> str:
    """ " (x1, y1) (x2, y2) ... (x10, y10)": metres, two decimals, a space before each point
    (a point then starts a pre-token of its own, so its tokens do not depend on the text
    before it)."""
    import numpy as np

    p = np.asarray(xy, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != FUTURE_STEPS or p.shape[1] < 2:
        raise ValueError(f"waypoints must be ({FUTURE_STEPS}, >=2), got shape {p.shape}")
    if not np.all(np.isfinite(p[:, :2])):
        raise ValueError("waypoints must be finite")
    return "".join(f" ({_number(x)}, {_number(y)})" for x, y in p[:, :2])


@dataclass(frozen=True)
class WaypointParse:
    """The waypoints read from an answer ((10, 2) metres), or why they could not be read."""

    xy: tuple[tuple[float, float], ...] | None = None
    error: str | None = None


def parse_waypoints(text: str) -> WaypointParse:
    """Exactly ten "(x, y)" points separated by white space, nothing else; otherwise an error
    saying what was found (fewer or more points, or text that is not a point)."""
    pos, points = 0, []
    for m in _POINT_RE.finditer(text):
        gap = text[pos : m.start()]
        if gap.strip():
            return WaypointParse(error=f"unexpected text {short_repr(gap.strip())} at char {pos}")
        x, y = float(m[1]), float(m[2])
        if not (math.isfinite(x) and math.isfinite(y)):  # hundreds of digits overflow
            return WaypointParse(error=f"waypoint {len(points) + 1} is not a finite number")
        points.append((x, y))
        pos = m.end()
    rest = text[pos:].strip()
    if rest:
        return WaypointParse(error=f"unexpected text {short_repr(rest)} at char {pos}")
    if len(points) != FUTURE_STEPS:
        return WaypointParse(error=f"{len(points)} waypoints, expected {FUTURE_STEPS}")
    return WaypointParse(xy=tuple(points))
