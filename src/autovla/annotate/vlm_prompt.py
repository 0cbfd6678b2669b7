"""The annotation request for one sample: template, camera images as data URLs, hint text.

The wording lives in a versioned template file (`annotate/templates/<name>.yaml`); this
module only fills it. Placeholders are `string.Template` names (`$speed`): substitution
cannot reach attributes or run format specs, whatever a template file says.
"""

from __future__ import annotations

import base64
import io
import os
import re
import stat
import string
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, field_validator

from autovla.config import StrictModel
from autovla.data.meta_actions import end_speed, meta_action
from autovla.data.schema import STANDARD_CAMERAS, DrivingSample
from autovla.geometry import path_length

TEMPLATE_DIR = Path(__file__).parent / "templates"
DEFAULT_TEMPLATE = "vlm-v1"
PLACEHOLDERS = frozenset(
    {"instruction", "speed", "accel", "meta_action", "future", "cameras", "max_chars", "reason"}
)
CAMERA_WORDS = {"front": "front", "front_left": "front-left", "front_right": "front-right"}
Frames = Literal["latest", "all"]


class Example(StrictModel):
    user: str
    answer: str


class VLMTemplate(StrictModel):
    """One versioned annotation prompt (see templates/vlm-v1.yaml for the fields)."""

    name: str = Field(min_length=1)
    version: int = Field(ge=1)
    system: str
    user: str
    judge: str
    repair: str
    examples: list[Example] = Field(default_factory=list)
    max_chars: int = Field(default=700, ge=50, le=20_000)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        from autovla.paths import name_problem

        problem = name_problem(v)  # the name becomes part of cache file names
        if problem is not None or not re.fullmatch(r"[A-Za-z0-9._+=@-]+", v):
            raise ValueError(f"name {v!r} must be a plain name (letters, digits, ._+=@-)")
        return v

    @field_validator("user", "judge", "repair")
    @classmethod
    def _known_placeholders(cls, v: str) -> str:
        try:
            names = set(string.Template(v).get_identifiers())
        except ValueError as e:
            raise ValueError(f"bad placeholder: {e}") from None
        if not string.Template(v).is_valid():
            raise ValueError("bad placeholder syntax (use $name; $$ for a dollar sign)")
        unknown = names - PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join(sorted(unknown))}; "
                f"valid: {', '.join(sorted(PLACEHOLDERS))}"
            )
        return v

    @property
    def key(self) -> str:
        """What the resume cache keys on besides the sample id."""
        return f"{self.name}@v{self.version}"

    def fill(self, text: str, values: dict[str, Any]) -> str:
        return string.Template(text).substitute({k: str(v) for k, v in values.items()})


def load_template(name_or_path: str | os.PathLike = DEFAULT_TEMPLATE) -> VLMTemplate:
    """A template by name (shipped with the package) or by path to a YAML file."""
    p = Path(name_or_path)
    if not p.suffix:
        p = TEMPLATE_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        shipped = ", ".join(sorted(q.stem for q in TEMPLATE_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"annotation template {str(name_or_path)!r} not found ({shipped})")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a readable YAML template: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: a template is a mapping of fields")
    from pydantic import ValidationError

    try:
        return VLMTemplate.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ValueError(f"{p}: field {field!r}: {err['msg']}") from None


def hint_action(sample: DrivingSample) -> str:
    """The ground-truth meta-action the VLM is told to explain."""
    if sample.meta_action:
        return sample.meta_action
    return meta_action(sample.future_array(), sample.ego.speed)


def future_summary(sample: DrivingSample) -> str:
    """The ground-truth future in one line: distance, lateral offset, heading, speeds."""
    f = sample.future_array()
    dist = float(path_length(np.concatenate([np.zeros((1, 2)), f[:, :2]])))
    dyaw = float(np.degrees(np.unwrap(np.r_[0.0, f[:, 2]])[-1]))
    side = "left" if f[-1, 1] >= 0 else "right"
    return (
        f"travelled {dist:.1f} m, ended {abs(f[-1, 1]):.1f} m to the {side}, heading change "
        f"{dyaw:+.0f} deg, speed {sample.ego.speed:.1f} -> {end_speed(f):.1f} m/s."
    )


MAX_IMAGE_FILE_BYTES = 64 * 2**20  # a 1920 x 1080 camera JPEG is well under 1 MiB


def _read_image_file(path: Path) -> bytes:
    """The file's bytes, at most MAX_IMAGE_FILE_BYTES, from a regular file only (a device or
    a pipe would be read forever)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        data = f.read(MAX_IMAGE_FILE_BYTES + 1)
    if len(data) > MAX_IMAGE_FILE_BYTES:
        raise ValueError(f"{path}: image file larger than {MAX_IMAGE_FILE_BYTES >> 20} MiB")
    return data


def encode_image(path: Path, max_side: int, quality: int = 85) -> str:
    """A JPEG data URL of the image, shrunk so its longer side is at most `max_side`.

    A JPEG is decoded at a reduced scale straight away (`draft`), which is what keeps
    full-size camera frames cheap; the last step down is area averaging (`BOX`), the filter a
    downscale wants.
    """
    from PIL import Image

    data = _read_image_file(path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            scale = min(1.0, max_side / max(w, h))
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            if scale < 1.0:
                im.draft("RGB", size)
            rgb = im.convert("RGB")
    except (OSError, ValueError) as e:  # the decoder names a buffer: say which file
        raise ValueError(f"{path}: cannot read the image: {e}") from e
    if rgb.size != size:
        rgb = rgb.resize(size, Image.BOX)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def build_messages(
    tpl: VLMTemplate,
    sample: DrivingSample,
    root: Path,
    frames: Frames = "latest",
    image_size: int = 448,
    judge: bool = False,
) -> list[dict[str, Any]]:
    """The chat messages of the first request for `sample` (OpenAI content-part format)."""
    cams = [c for c in STANDARD_CAMERAS if c in sample.cameras]
    if not cams:
        raise ValueError(f"sample {sample.id!r}, field 'cameras': none of {STANDARD_CAMERAS}")
    which = "latest frame" if frames == "latest" else f"{sample.num_frames} frames at 2 Hz"
    values = template_values(tpl, sample)
    values["cameras"] = ", ".join(CAMERA_WORDS[c] for c in cams) + f" ({which} each)"
    text = tpl.fill(tpl.user, values)
    if judge:
        text += "\n" + tpl.fill(tpl.judge, values)
    parts: list[dict[str, Any]] = []
    for cam in cams:
        paths = sample.cameras[cam][-1:] if frames == "latest" else sample.cameras[cam]
        parts.append({"type": "text", "text": f"{CAMERA_WORDS[cam].capitalize()} camera:"})
        for rel in paths:
            url = encode_image(root / rel, image_size)
            parts.append({"type": "image_url", "image_url": {"url": url}})
    parts.append({"type": "text", "text": text})
    # a template without system text sends none (servers that accept only their own prompt)
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": tpl.system}] if tpl.system.strip() else []
    )
    for ex in tpl.examples:
        messages.append({"role": "user", "content": ex.user})
        messages.append({"role": "assistant", "content": ex.answer})
    messages.append({"role": "user", "content": parts})
    return messages


def template_values(tpl: VLMTemplate, sample: DrivingSample) -> dict[str, Any]:
    return {
        "instruction": sample.instruction,
        "speed": f"{sample.ego.speed:.3f}",
        "accel": f"{sample.ego.ax:.3f}",
        "meta_action": hint_action(sample),
        "future": future_summary(sample),
        "max_chars": tpl.max_chars,
        "cameras": "",
        "reason": "",
    }


def repair_messages(
    tpl: VLMTemplate,
    sample: DrivingSample,
    messages: list[dict[str, Any]],
    answer: str,
    reason: str,
) -> list[dict[str, Any]]:
    """The conversation extended by the rejected answer and a re-ask that names why."""
    values = {**template_values(tpl, sample), "reason": reason}
    return [
        *messages,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": tpl.fill(tpl.repair, values)},
    ]
