"""A client of `autovla serve` that needs only the standard library, numpy and Pillow.

It installs into another environment (the NAVSIM devkit's, CARLA's Python) without torch or
transformers: `pip install --no-deps autovla numpy pillow` there, or copy this file.

    from autovla.integrations.client import PlanClient, plan_request
    client = PlanClient("http://127.0.0.1:8000")            # api_key=... or $AUTOVLA_API_KEY
    body = plan_request({"front": [f0, f1, f2, f3], "front_left": [...], "front_right": [...]},
                        vx=5.0, ax=0.2, instruction="go straight")   # frames: RGB arrays
    reply = client.plan(body)
    reply.trajectory          # (10, 3) x, y, heading at 0.5 s ... 5 s, ego frame

One `PlanClient` may be shared by threads (one keep-alive connection per thread).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CAMERAS = ("front", "front_left", "front_right")  # the cameras the model reads, in its order
FRAMES = 4  # per camera, 2 Hz, oldest first
INSTRUCTIONS = ("turn left", "go straight", "turn right", "unknown")
API_KEY_ENV = "AUTOVLA_API_KEY"


class ServiceError(RuntimeError):
    """The service answered with an error (status, the field it names, its code)."""

    def __init__(
        self, message: str, status: int | None = None, param: str | None = None, code: str = ""
    ):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


class ServiceUnavailable(ServiceError):
    """No answer: connection refused, reset or timed out."""


@dataclass
class PlannedTrajectory:
    trajectory: np.ndarray  # (10, 3) x, y, heading, ego frame
    mode: str
    reasoning: str | None
    action_ids: list[int]
    text: str
    num_generated_tokens: int


@dataclass
class PlanReply:
    id: str
    plans: list[PlannedTrajectory]
    batch_size: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def trajectory(self) -> np.ndarray:
        """The answer: the first plan's poses."""
        return self.plans[0].trajectory


# --- building requests ------------------------------------------------------------------------
def image_file(image: Any, fmt: str = "JPEG", quality: int = 95) -> bytes:
    """The bytes of an image file: encoded bytes as they are, a path read, an RGB uint8 array
    (H, W, 3) or a PIL image encoded as JPEG (quality 95, Pillow's defaults otherwise) or
    another Pillow format."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    from PIL import Image

    if isinstance(image, np.ndarray):
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"an image array must be (H, W, 3) RGB, got shape {arr.shape}")
        image = Image.fromarray(arr.astype(np.uint8, copy=False))
    if not hasattr(image, "save"):
        raise TypeError(f"cannot encode {type(image).__name__} as an image")
    buf = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format=fmt)
    return buf.getvalue()


def encode_image(image: Any, fmt: str = "JPEG", quality: int = 95) -> str:
    """Base64 of `image_file(image, fmt, quality)`, as a request carries it."""
    return base64.b64encode(image_file(image, fmt, quality)).decode("ascii")


def plan_request(
    cameras: Mapping[str, Sequence[Any]],
    vx: float,
    instruction: str = "unknown",
    vy: float = 0.0,
    ax: float = 0.0,
    ay: float = 0.0,
    history: Sequence[Sequence[float]] | None = None,
    request_id: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The JSON body of POST /v1/plan. `cameras` maps front / front_left / front_right to 4
    frames, oldest first (arrays, PIL images, encoded bytes or paths). `options`: mode,
    action_choice, temperature, top_p, seed, num_samples, max_reasoning_tokens."""
    missing = [c for c in CAMERAS if c not in cameras]
    if missing:
        raise ValueError(f"cameras: missing {', '.join(missing)} (the model reads {CAMERAS})")
    if instruction not in INSTRUCTIONS:
        raise ValueError(f"instruction must be one of {INSTRUCTIONS}, got {instruction!r}")
    body: dict[str, Any] = {
        "cameras": {c: [encode_image(f) for f in cameras[c]] for c in CAMERAS},
        "ego": {"vx": float(vx), "vy": float(vy), "ax": float(ax), "ay": float(ay)},
        "instruction": instruction,
    }
    if history is not None:
        body["history"] = [[float(v) for v in p] for p in history]
    if request_id is not None:
        body["id"] = request_id
    body.update(options)
    return body


def request_from_sample(sample: Any, root: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """The request for a DrivingSample (or anything shaped like one) whose images lie under
    `root`; the image files are sent as they are (no re-encoding)."""
    root = Path(root)
    cams = {c: [root / rel for rel in sample.cameras[c]] for c in CAMERAS}
    ego = sample.ego
    options.setdefault("request_id", sample.id)
    return plan_request(
        cams, vx=ego.vx, vy=ego.vy, ax=ego.ax, ay=ego.ay, instruction=sample.instruction,
        history=sample.history, **options,
    )  # fmt: skip


# --- the client ----------------------------------------------------------------------------
class PlanClient:
    """Calls the service over HTTP/1.1 with keep-alive connections (one per thread)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 30.0,
    ):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server url must be http(s)://host:port, got {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.timeout = timeout
        self._local = threading.local()

    def plan(self, body: Mapping[str, Any]) -> PlanReply:
        """POST /v1/plan; ServiceError on a rejection, ServiceUnavailable without an answer."""
        out = self.call("POST", "/v1/plan", body)
        plans = [
            PlannedTrajectory(
                trajectory=np.asarray(p["trajectory"], dtype=np.float64).reshape(-1, 3),
                mode=p["mode"],
                reasoning=p.get("reasoning"),
                action_ids=list(p["action_ids"]),
                text=p.get("text", ""),
                num_generated_tokens=int(p.get("num_generated_tokens", 0)),
            )
            for p in out["plans"]
        ]
        return PlanReply(out["id"], plans, int(out.get("batch_size", 1)), out.get("timings", {}))

    def health(self) -> dict[str, Any]:
        return self.call("GET", "/healthz")

    def models(self) -> dict[str, Any]:
        return self.call("GET", "/v1/models")

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One request; the decoded JSON answer."""
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in (0, 1):
            conn, reused = self._connection()
            try:
                conn.request(method, self._base + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
                if resp.will_close:
                    self._drop()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop()
                if reused and attempt == 0:  # a kept-alive connection the server had closed
                    continue
                raise ServiceUnavailable(f"{self.url}: connection lost ({e})") from e
            except (OSError, http.client.HTTPException) as e:  # refused, timed out, ...
                self._drop()
                raise ServiceUnavailable(f"{self.url}: no answer ({e})") from e
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if status >= 400:
            err = payload.get("error", {}) if isinstance(payload, dict) else {}
            message = err.get("message") or raw[:200].decode("utf-8", "replace")
            raise ServiceError(
                f"{self.url}{path}: HTTP {status}: {message}",
                status=status, param=err.get("param"), code=err.get("code", ""),
            )  # fmt: skip
        if payload is None:
            raise ServiceError(f"{self.url}{path}: HTTP {status} without a JSON body", status)
        return payload

    def close(self) -> None:
        self._drop()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        self._local.conn = conn
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
