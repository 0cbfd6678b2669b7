"""Request images: base64 (or data URL) -> checked, decoded RGB frames, in memory only.

Every limit is checked before the work it guards: the base64 length before decoding it, the
file size before opening it, the width and height (read from the header by `Image.open`, which
decodes no pixels) before decoding them, and the request's total of decoded bytes before each
frame is decoded. A JPEG's scans are counted before it is opened (each scan is a pass over the
whole image), and frames too small or too elongated for the vision encoder are refused (422)
before any pixel is decoded. Only the formats a camera sends are opened (JPEG and PNG;
animated PNG, GIF and WebP for a video content part), so no other Pillow decoder is reachable
from a request.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from autovla.serve.config import ServeLimits
from autovla.serve.errors import ServiceError

STILL_FORMATS = ("JPEG", "PNG")
VIDEO_FORMATS = ("PNG", "GIF", "WEBP")  # animated PNG, GIF or WebP: one frame per 0.5 s


@dataclass
class DecodeBudget:
    """The decoded bytes one request may still use (all its frames as RGB)."""

    limits: ServeLimits
    used: int = 0
    images: int = 0
    deadline: float | None = None  # time.monotonic() after which the request gets a 504

    def check_time(self, field: str) -> None:
        """Between frames: a request past its deadline (its caller already has a 504) stops
        decoding instead of finishing in the background."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ServiceError(504, field, "the request timed out while decoding", "timeout")

    def charge(self, field: str, width: int, height: int, frames: int = 1) -> None:
        lim = self.limits
        short, long = min(width, height), max(width, height)
        if short < lim.min_image_side:
            raise ServiceError(
                422, field,
                f"image is {width}x{height}: its shorter side must be at least "
                f"{lim.min_image_side} pixels",
                "image_too_small",
            )  # fmt: skip
        if long > lim.max_aspect_ratio * short:
            raise ServiceError(
                422, field,
                f"image is {width}x{height}: its aspect ratio {long / short:.4g} is over "
                f"{lim.max_aspect_ratio:g}",
                "bad_aspect_ratio",
            )  # fmt: skip
        px = width * height
        if px > self.limits.max_image_pixels:
            raise ServiceError(
                413, field,
                f"image is {width}x{height} = {px} pixels, at most "
                f"{self.limits.max_image_pixels} are accepted",
                "image_too_large",
            )  # fmt: skip
        self.images += frames
        if self.images > self.limits.max_images:
            raise ServiceError(
                400, field, f"more than {self.limits.max_images} images in one request",
                "too_many_images",
            )  # fmt: skip
        self.used += 3 * px * frames
        if self.used > self.limits.max_decoded_bytes:
            raise ServiceError(
                413, field,
                f"decoded frames of this request would take {self.used} bytes, at most "
                f"{self.limits.max_decoded_bytes} are accepted",
                "decoded_too_large",
            )  # fmt: skip


def image_bytes(value: str, field: str, limits: ServeLimits) -> bytes:
    """The file bytes of a base64 string or a `data:<mime>;base64,<data>` URL."""
    data = value
    if value.startswith("data:"):
        head, sep, data = value.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ServiceError(
                400, field, "a data URL must be of the form data:<mime>;base64,<data>", "bad_url"
            )
    elif value.startswith(("http://", "https://", "file:")):
        raise ServiceError(
            400, field, "only base64 data or data URLs are accepted (the service fetches nothing)",
            "bad_url",
        )  # fmt: skip
    if len(data) > 4 * (limits.max_image_bytes // 3 + 1) + 4:
        raise ServiceError(
            413, field, f"image is over {limits.max_image_bytes} bytes", "image_too_large"
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ServiceError(400, field, f"not valid base64 ({e})", "bad_base64") from None
    if len(raw) > limits.max_image_bytes:
        raise ServiceError(
            413, field, f"image is {len(raw)} bytes, at most {limits.max_image_bytes}",
            "image_too_large",
        )  # fmt: skip
    if not raw:
        raise ServiceError(400, field, "empty image", "bad_image")
    return raw


def jpeg_scans(raw: bytes) -> int:
    """Start-of-scan markers (FF DA) in a JPEG file. Entropy-coded data never holds FF DA (an
    FF there is followed by 00 or a restart marker), so each is a scan, which the decoder runs
    over the whole image: a few bytes each, thousands of them cost a whole decode each."""
    return raw.count(b"\xff\xda")


def _check_scans(raw: bytes, field: str, limits: ServeLimits) -> None:
    if raw.startswith(b"\xff\xd8"):
        n = jpeg_scans(raw)
        if n > limits.max_jpeg_scans:
            raise ServiceError(
                400, field, f"JPEG has {n} scans, at most {limits.max_jpeg_scans} are accepted",
                "too_many_scans",
            )  # fmt: skip


def _open(raw: bytes, field: str, formats: tuple[str, ...]) -> Image.Image:
    try:
        return Image.open(io.BytesIO(raw), formats=list(formats))
    except Image.DecompressionBombError as e:
        raise ServiceError(413, field, f"image rejected: {e}", "image_too_large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        kinds = "/".join(formats)
        raise ServiceError(400, field, f"not a readable {kinds} image ({e})", "bad_image") from None


def _rgb(im: Image.Image, field: str) -> Image.Image:
    try:
        if im.mode == "RGB" and getattr(im, "n_frames", 1) == 1:
            im.load()  # decodes the pixels; no copy needed (most JPEGs)
            return im
        return im.convert("RGB")  # decodes the pixels
    except (OSError, ValueError, SyntaxError) as e:
        raise ServiceError(400, field, f"image data is corrupt ({e})", "bad_image") from None


def decode_image(value: str, field: str, budget: DecodeBudget) -> Image.Image:
    """One still JPEG or PNG frame as an RGB image."""
    budget.check_time(field)
    raw = image_bytes(value, field, budget.limits)
    _check_scans(raw, field, budget.limits)
    with _open(raw, field, STILL_FORMATS) as im:
        if getattr(im, "n_frames", 1) != 1:
            raise ServiceError(
                400, field, "an animated image where one frame is expected", "bad_image"
            )
        budget.charge(field, *im.size)
        return _rgb(im, field)


def decode_video(value: str, field: str, budget: DecodeBudget, frames: int) -> list[Image.Image]:
    """An animated PNG, GIF or WebP of exactly `frames` frames (oldest first) as RGB images."""
    budget.check_time(field)
    raw = image_bytes(value, field, budget.limits)
    with _open(raw, field, VIDEO_FORMATS) as im:
        n = int(getattr(im, "n_frames", 1))
        if n != frames:
            raise ServiceError(
                400, field, f"a video must have {frames} frames (2 Hz, oldest first), got {n}",
                "wrong_frame_count",
            )  # fmt: skip
        budget.charge(field, *im.size, frames=n)
        out = []
        for i in range(n):
            budget.check_time(field)
            try:
                im.seek(i)
            except (OSError, EOFError, ValueError) as e:
                raise ServiceError(400, field, f"frame {i}: {e}", "bad_image") from None
            out.append(_rgb(im, f"{field} frame {i}"))
        return out
