"""Settings of `autovla serve`: where it listens, how it batches, and the limits it enforces.

Every limit bounds memory or time for one request; together with `max_queue` they bound the
whole process (at most `max_queue` admitted requests, each at most `max_body_bytes` on the
wire and `max_decoded_bytes` decoded). Loaded from YAML (`autovla serve --config FILE`) with
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
        default=32, ge=1, description="admitted requests (decoding, queued, planning); 429 above"
    )
    timeout_s: float = Field(default=60.0, gt=0.0, description="per request, body to answer")
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
