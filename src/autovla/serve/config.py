"""Settings of `autovla serve`: where it listens, how it batches, and the limits it enforces.

Every limit bounds memory or time for one request; together with `max_receiving` and
`max_queue` they bound the whole process (at most `max_receiving` bodies being received and
`max_queue` admitted requests, each at most `max_body_bytes` on the wire and
`max_decoded_bytes` decoded, at most `decode_threads` of them parsed and decoded at once).
Loaded from YAML (`autovla serve --config FILE`) with
command-line flags on top; unknown keys are errors.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from autovla.config import StrictModel

MIB = 1 << 20


class ServeLimits(StrictModel):
    """Per-request limits; a request over any of them is rejected (4xx naming the field)."""

    max_body_bytes: int = Field(default=24 * MIB, ge=1024, description="request body on the wire")
    max_images: int = Field(default=12, ge=1, description="images (video frames) per request")
    max_image_bytes: int = Field(
        default=4 * MIB, ge=64, description="one image file after base64 decoding"
    )
    max_image_pixels: int = Field(
        default=1920 * 1080, ge=28 * 28, description="width x height of one image or frame"
    )
    max_decoded_bytes: int = Field(
        default=80 * MIB, ge=1024, description="all decoded RGB frames of one request"
    )
    min_image_side: int = Field(
        default=28, ge=1, description="shortest side of a frame (the vision encoder's 2x2 "
        "patches of 14 pixels)",
    )  # fmt: skip
    max_aspect_ratio: float = Field(
        default=200.0, ge=1.0, description="longest over shortest side (Qwen2.5-VL's "
        "processor refuses more than 200)",
    )  # fmt: skip
    max_jpeg_scans: int = Field(
        default=100, ge=1, description="start-of-scan markers in one JPEG (a baseline JPEG "
        "has 1, a progressive one about 10; each scan is a pass over the whole image)",
    )  # fmt: skip
    max_text_chars: int = Field(
        default=4096, ge=256, description="text of one chat message (the state line is "
        "about 100 characters; camera labels and the system prompt fit with room)",
    )  # fmt: skip
    max_json_items: int = Field(
        default=20_000, ge=100, description="',' and ':' in a JSON body: bounds its values "
        "and keys (base64 has neither), so parsing and validation errors stay small",
    )  # fmt: skip
    max_reasoning_tokens: int | None = Field(
        default=None, ge=1, description="cap on the chain of thought (default: the model's)"
    )
    max_num_samples: int = Field(default=8, ge=1, description="plans per request (chat `n`)")


class ServeConfig(StrictModel):
    host: str = Field(default="127.0.0.1", description="bind address (loopback unless told)")
    port: int = Field(default=8000, ge=0, le=65535)
    max_batch: int = Field(default=8, ge=1, description="requests planned in one batch")
    max_wait_ms: float = Field(
        default=5.0, ge=0.0, description="how long the first request of a batch waits for more"
    )
    max_queue: int = Field(
        default=32, ge=1,
        description="admitted requests (body received; decoding, queued, planning); 429 above",
    )  # fmt: skip
    max_receiving: int = Field(
        default=32, ge=1, description="requests whose body is being received at once; 429 above"
    )
    body_timeout_s: float = Field(
        default=10.0, gt=0.0, description="time to receive a request's body; 408 after"
    )
    timeout_s: float = Field(
        default=60.0, gt=0.0, description="per request, from its body received to the answer"
    )
    decode_threads: int = Field(
        default=4, ge=1, description="threads parsing requests and decoding their images"
    )
    shutdown_grace_s: float = Field(
        default=90.0, ge=0.0, description="on SIGTERM, how long in-flight requests may finish"
    )
    device: str | None = Field(default=None, description="cpu, cuda, ... (default: cuda if any)")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads")
    served_model_name: str | None = Field(
        default=None, description="name in /v1/models (default: the model directory's name)"
    )
    limits: ServeLimits = Field(default_factory=ServeLimits)

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> ServeConfig:
        if self.max_queue < self.max_batch:
            raise ValueError(
                f"max_queue ({self.max_queue}) must be >= max_batch ({self.max_batch}): "
                "a full batch could never be admitted"
            )
        return self
