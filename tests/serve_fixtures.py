"""Shared helpers for the service tests: the tiny model behind an app, requests, images."""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib

from PIL import Image

from autovla.integrations.client import request_from_sample
from autovla.serve.app import create_app
from autovla.serve.config import ServeConfig, ServeLimits
from autovla.serve.engine import Engine
from tests.model_fixtures import dataset, tiny_vla

REASONING = 24  # short chains of thought keep slow plans fast


def engine() -> Engine:
    return Engine(tiny_vla(), "tiny")


def make_app(engine_: Engine | None = None, api_key: str | None = None, **settings):
    limits = settings.pop("limits", {})
    limits.setdefault("max_reasoning_tokens", REASONING)
    config = ServeConfig(**{"max_wait_ms": 0.0, **settings}, limits=ServeLimits(**limits))
    return create_app(engine_ or engine(), config, api_key=api_key)


def body(i: int = 0, **options) -> dict:
    """The request for dataset sample i (its PNG files sent as they are)."""
    root, samples = dataset()
    return request_from_sample(samples[i], root, **options)


def png_b64(width: int, height: int, colour=(90, 120, 150), fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def png_header_only(width: int, height: int) -> str:
    """A tiny PNG whose header claims width x height (a decompression bomb's shape): only a
    decoder that reads the pixels would notice it is not whole."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return base64.b64encode(raw + chunk(b"IEND", b"")).decode()


class GatedEngine(Engine):
    """The tiny model, but every batch waits until `gate` is set (queue and shutdown tests)."""

    def __init__(self) -> None:
        super().__init__(tiny_vla(), "tiny")
        self.gate = threading.Event()
        self.batches: list[int] = []

    def plan(self, key, jobs):
        self.batches.append(len(jobs))
        if not self.gate.wait(30):
            raise TimeoutError("test gate never opened")
        return super().plan(key, jobs)
