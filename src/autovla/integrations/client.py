"""A client of `autovla serve` that needs only the standard library, numpy and Pillow.

It installs into another environment (the NAVSIM devkit's, CARLA's Python) without torch or
transformers: `pip install --no-deps autovla numpy pillow` there, or copy this file.

    from autovla.integrations.client import PlanClient, plan_request
    client = PlanClient("http://127.0.0.1:8000")            # api_key=... or $AUTOVLA_API_KEY
    body = plan_request({"front": [f0, f1, f2, f3], "front_left": [...], "front_right": [...]},
                        vx=5.0, ax=0.2, instruction="go straight")   # frames: RGB arrays
    reply = client.plan(body)
    reply.trajectory          # (10, 3) x, y, heading at 0.5 s ... 5 s, ego frame

One `PlanClient` may be shared by threads (one keep-alive connection per thread). `timeout`
bounds each call as a whole (connect, send, headers and body), not each socket operation, so
a server that trickles its answer cannot hold a caller longer. An answer that is not what the
service sends (not JSON, a field missing or of the wrong type, NaN) raises `BadAnswer`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import math
import os
import socket
import threading
import time
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


class BadAnswer(ServiceError):
    """The server answered, but not as the service does (not JSON, a field missing or of the
    wrong type, a number that is not finite): the message names the field."""


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _loads(raw: bytes) -> Any:
    """Strict JSON: NaN and Infinity (which Python's json accepts) are errors."""
    return json.loads(raw, parse_constant=_no_constant)


class _Check:
    """Typed reads of a decoded answer; BadAnswer naming the field (`plans[0].trajectory`)."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, what: str) -> BadAnswer:
        return BadAnswer(f"{self.where}: malformed answer: {field}: {what}")

    def obj(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"expected a JSON object, got {type(value).__name__}")
        return value

    def get(self, obj: dict[str, Any], key: str, field: str, kind: type | tuple, default=...):
        if key not in obj:
            if default is not ...:
                return default
            raise self.fail(field, "missing")
        value = obj[key]
        if default is None and value is None:
            return None
        bad_bool = isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,)
        )
        if not isinstance(value, kind) or bad_bool:
            raise self.fail(field, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def number(self, value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"expected a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise self.fail(field, f"not finite ({value})")
        return float(value)


def _kind_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "an object",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_plan_answer(out: Any, where: str = "answer") -> PlanReply:
    """The PlanReply of a decoded POST /v1/plan answer, checked field by field (BadAnswer)."""
    c = _Check(where)
    out = c.obj(out, "body")
    plans_raw = c.get(out, "plans", "plans", list)
    if not plans_raw:
        raise c.fail("plans", "empty")
    plans = []
    for i, p in enumerate(plans_raw):
        f = f"plans[{i}]"
        p = c.obj(p, f)
        traj = c.get(p, "trajectory", f"{f}.trajectory", list)
        if not traj:
            raise c.fail(f"{f}.trajectory", "empty")
        poses = []
        for k, pose in enumerate(traj):
            if not isinstance(pose, list) or len(pose) != 3:
                raise c.fail(f"{f}.trajectory[{k}]", "expected [x, y, heading]")
            poses.append([c.number(v, f"{f}.trajectory[{k}][{j}]") for j, v in enumerate(pose)])
        ids = c.get(p, "action_ids", f"{f}.action_ids", list)
        for k, v in enumerate(ids):
            if isinstance(v, bool) or not isinstance(v, int):
                raise c.fail(f"{f}.action_ids[{k}]", f"expected an integer, got {v!r:.40}")
        plans.append(
            PlannedTrajectory(
                trajectory=np.asarray(poses, dtype=np.float64),
                mode=c.get(p, "mode", f"{f}.mode", str),
                reasoning=c.get(p, "reasoning", f"{f}.reasoning", str, None),
                action_ids=list(ids),
                text=c.get(p, "text", f"{f}.text", str, ""),
                num_generated_tokens=c.get(
                    p, "num_generated_tokens", f"{f}.num_generated_tokens", int, 0
                ),
            )
        )
    timings_raw = c.obj(out.get("timings", {}), "timings")
    timings = {str(k): c.number(v, f"timings.{k}") for k, v in timings_raw.items()}
    return PlanReply(
        id=c.get(out, "id", "id", str),
        plans=plans,
        batch_size=c.get(out, "batch_size", "batch_size", int, 1),
        timings=timings,
    )


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
        """POST /v1/plan; ServiceError on a rejection, ServiceUnavailable without an answer,
        BadAnswer for an answer that is not the service's."""
        return parse_plan_answer(self.call("POST", "/v1/plan", body), f"{self.url}/v1/plan")

    def health(self) -> dict[str, Any]:
        return _Check(f"{self.url}/healthz").obj(self.call("GET", "/healthz"), "body")

    def models(self) -> dict[str, Any]:
        return _Check(f"{self.url}/v1/models").obj(self.call("GET", "/v1/models"), "body")

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One request, all of it within `timeout` seconds; the decoded JSON answer."""
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        deadline = time.monotonic() + self.timeout
        for attempt in (0, 1):
            conn, reused = self._connection()
            watchdog = _Watchdog()
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no time left")
                if conn.sock is None:
                    conn.timeout = remaining
                    conn.connect()
                # The per-operation timeout alone lets a trickling server (a byte a second)
                # hold the call forever: at the deadline the watchdog shuts the socket down.
                conn.sock.settimeout(remaining)
                watchdog.arm(conn.sock, remaining)
                conn.request(method, self._base + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
                if resp.will_close:
                    self._drop()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop()
                if watchdog.fired:
                    raise self._late(path) from e
                if reused and attempt == 0:  # a kept-alive connection the server had closed
                    continue
                raise ServiceUnavailable(f"{self.url}: connection lost ({e})") from e
            except (OSError, http.client.HTTPException) as e:  # refused, timed out, ...
                self._drop()
                if watchdog.fired or isinstance(e, TimeoutError):
                    raise self._late(path) from e
                raise ServiceUnavailable(f"{self.url}: no answer ({e})") from e
            finally:
                watchdog.cancel()
        try:
            payload = _loads(raw) if raw else None
        except (ValueError, RecursionError) as e:
            if status < 400:
                raise BadAnswer(
                    f"{self.url}{path}: HTTP {status}: malformed answer: body: not JSON ({e})",
                    status,
                ) from None
            payload = None
        if status >= 400:
            err = payload.get("error", {}) if isinstance(payload, dict) else {}
            err = err if isinstance(err, dict) else {}
            message, param, code = err.get("message"), err.get("param"), err.get("code")
            if not isinstance(message, str) or not message:
                message = raw[:200].decode("utf-8", "replace")
            raise ServiceError(
                f"{self.url}{path}: HTTP {status}: {message[:500]}", status=status,
                param=param if isinstance(param, str) else None,
                code=code if isinstance(code, str) else "",
            )  # fmt: skip
        if payload is None:
            raise BadAnswer(
                f"{self.url}{path}: HTTP {status}: malformed answer: empty body", status
            )
        return payload

    def _late(self, path: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"{self.url}{path}: no complete answer within the timeout ({self.timeout:g} s)"
        )

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


class _Watchdog:
    """Shuts a socket down after a delay (unblocking a read in progress); `fired` says so."""

    def __init__(self) -> None:
        self.fired = False
        self._timer: threading.Timer | None = None

    def arm(self, sock: socket.socket, seconds: float) -> None:
        def fire() -> None:
            self.fired = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        self._timer = threading.Timer(seconds, fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
