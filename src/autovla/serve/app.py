"""The FastAPI app: endpoints, the guard in front of them, and the uvicorn runner.

Order of checks for a planning request (each a JSON error naming the field, see `errors`):
bearer token (401) -> body size from Content-Length (413) -> a receiving slot (429 when
`max_receiving` bodies are arriving) -> the body, within `body_timeout_s` (408) and
`max_body_bytes` (413) -> its JSON items (413) -> admission to the bounded queue (429; a client
that trickles its body holds a receiving slot for at most `body_timeout_s`, never an admitted
one) -> schema (400) -> images, decoded by `decode_threads` worker threads (400/413/422) -> the
dynamic batch. From the body received to the answer everything (parsing, decoding, queueing,
planning) runs within `timeout_s`: 504 after it.

Paths are checked as the router sees them (without the ASGI `root_path`), and every request
with a body goes through the body limits, whatever its path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from autovla import __version__
from autovla.data.schema import STANDARD_CAMERAS, DrivingSample
from autovla.model.inputs import MemoryImages
from autovla.serve.batching import Batcher
from autovla.serve.chat import (
    chat_to_plan,
    message_text,
    reasoning_cap_from_max_tokens,
    system_kind,
)
from autovla.serve.config import ServeConfig
from autovla.serve.engine import Engine, PlanJob, PlanOptions, batch_key
from autovla.serve.errors import ServiceError, error_body, field_path, validation_details
from autovla.serve.images import DecodeBudget, decode_image
from autovla.serve.metrics import CONTENT_TYPE, Metrics
from autovla.serve.schema import (
    ChatChoice,
    ChatChoiceMessage,
    ChatRequest,
    ChatResponse,
    Plan,
    PlanRequest,
    PlanResponse,
)

log = logging.getLogger("autovla.serve")

PLAN_PATHS = ("/v1/plan", "/v1/chat/completions")
OPEN_PATHS = ("/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
KNOWN_PATHS = (*PLAN_PATHS, *OPEN_PATHS, "/v1/models", "/metrics")

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
BODYLESS_METHODS = ("GET", "HEAD", "OPTIONS")
DEADLINE_KEY = "autovla.deadline"  # scope key: time.monotonic() when the request times out


try:  # private in Starlette: a release without it falls back to the same rule below
    from starlette._utils import get_route_path as _starlette_route_path
except ImportError:  # pragma: no cover - depends on the installed Starlette
    _starlette_route_path = None


def _strip_root_path(scope: dict) -> str:
    """Starlette's rule for the routed path: `root_path` removed when the path starts with it
    at a segment boundary."""
    path, root = scope["path"], scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


def route_path(scope: dict) -> str:
    """The path the router matches (without the `root_path` prefix a server or proxy put in
    front), so the guard checks what will be served. Starlette's own function where this
    release has it (it is private), the same rule otherwise."""
    return (_starlette_route_path or _strip_root_path)(scope) or "/"


def check_api_key(api_key: str | None) -> None:
    """None means no auth; an empty or blank key would silently mean the same, so refuse it."""
    if api_key is not None and not api_key.strip():
        raise ValueError(
            "the API key is empty: give a non-empty key, or none to serve without a bearer token"
        )


def endpoint_label(path: str) -> str:
    """A metrics label: known paths as they are, anything else 'other' (bounded cardinality)."""
    return path if path in KNOWN_PATHS else "other"


# --- the guard: auth, admission, body size ----------------------------------------------------
class Guard:
    """Pure ASGI middleware: checks that must happen before the body is read or parsed."""

    def __init__(self, app: ASGIApp, config: ServeConfig, api_key: str | None, metrics: Metrics):
        self.app = app
        self.config = config
        check_api_key(api_key)
        self._key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self.metrics = metrics
        self.admitted = 0  # planning requests between admission and their answer
        self.receiving = 0  # requests whose body is arriving

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        if self._key_digest is None:
            return True
        value = next((v for k, v in headers if k.lower() == b"authorization"), b"")
        scheme, _, token = value.partition(b" ")
        # Compare digests in constant time: neither the token's content nor its length leaks.
        given = hashlib.sha256(token.strip()).digest()
        return scheme.lower() == b"bearer" and hmac.compare_digest(given, self._key_digest)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        label = endpoint_label(path)
        started = time.perf_counter()
        status_seen: list[int] = []

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(int(message["status"]))
            await send(message)

        try:
            if path not in OPEN_PATHS and not self.authorized(scope.get("headers", [])):
                await self._refuse(
                    send_counted,
                    label,
                    401,
                    None,
                    "missing or wrong bearer token",
                    "unauthorized",
                    {"www-authenticate": "Bearer"},
                )
                return
            planning = path in PLAN_PATHS
            if not planning and scope.get("method", "GET") in BODYLESS_METHODS:
                await self.app(scope, receive, send_counted)
                return
            body = await self._receive(scope, receive, send_counted, label)
            if body is None:
                return
            if not planning:
                await self.app(scope, _replay(body, receive), send_counted)
                return
            if self.admitted >= self.config.max_queue:
                await self._refuse(
                    send_counted,
                    label,
                    429,
                    None,
                    f"the queue is full ({self.config.max_queue} requests); retry later",
                    "queue_full",
                    {"retry-after": "1"},
                )
                return
            self.admitted += 1
            self.metrics.queue_depth.set(self.admitted)
            try:
                await self._answer(scope, _replay(body, receive), send_counted, status_seen, label)
            finally:
                self.admitted -= 1
                self.metrics.queue_depth.set(self.admitted)
        finally:
            status = status_seen[0] if status_seen else 499  # 499: the client went away
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)

    async def _answer(
        self, scope: dict, receive: Callable, send: Callable, status_seen: list[int], label: str
    ) -> None:
        """Run the app within the request timeout, counted from the body received; the
        endpoints read the same deadline (scope[DEADLINE_KEY]) for their own steps."""
        timeout = self.config.timeout_s
        scope[DEADLINE_KEY] = time.monotonic() + timeout
        task = asyncio.ensure_future(self.app(scope, receive, send))
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if task in done or status_seen:  # answered, or answering (its own 504 perhaps)
                await task
                return
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except asyncio.CancelledError:  # the server is going away: so does the request
            task.cancel()
            raise
        if status_seen:  # the answer had started: counted, nothing left to send
            self.metrics.errors.labels(label, "timeout").inc()
            return
        await self._refuse(
            send,
            label,
            504,
            None,
            f"no answer within the request timeout ({timeout:.3g} s)",
            "timeout",
        )

    async def _refuse(
        self,
        send: Callable,
        label: str,
        status: int,
        param: str | None,
        message: str,
        code: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer a JSON error naming the field, and count it under its code."""
        self.metrics.errors.labels(label, code).inc()
        await _reject(send, status, param, message, code, headers)

    async def _receive(
        self, scope: dict, receive: Callable, send: Callable, label: str
    ) -> bytes | None:
        """The body, or None after answering why not (408, 413, 429) or a disconnect."""
        if self.receiving >= self.config.max_receiving:
            await self._refuse(
                send,
                label,
                429,
                None,
                f"{self.config.max_receiving} requests are sending their bodies; retry later",
                "too_many_receiving",
                {"retry-after": "1"},
            )
            return None
        self.receiving += 1
        try:
            body = await self._read_body(scope, receive, send, label)
        finally:
            self.receiving -= 1
        if body is None:
            return None
        lim = self.config.limits.max_json_items
        items = body.count(b",") + body.count(b":")  # bytes.count: C speed, no parsing
        if items > lim:
            await self._refuse(
                send,
                label,
                413,
                "body",
                f"request body has {items} JSON items (',' and ':'), at most {lim}",
                "too_many_items",
            )
            return None
        return body

    async def _read_body(
        self, scope: dict, receive: Callable, send: Callable, label: str
    ) -> bytes | None:
        limit = self.config.limits.max_body_bytes
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await self._refuse(
                    send, label, 400, "body", "bad Content-Length header", "bad_length"
                )
                return None
            if declared > limit:
                await self._refuse(
                    send,
                    label,
                    413,
                    "body",
                    f"request body is {declared} bytes, at most {limit}",
                    "body_too_large",
                )
                return None
        chunks: list[bytes] = []
        size = 0

        async def read() -> bool:
            nonlocal size
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return False
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return True
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return True

        try:
            connected = await asyncio.wait_for(read(), self.config.body_timeout_s)
        except TimeoutError:
            took = self.config.body_timeout_s
            await self._refuse(
                send,
                label,
                408,
                "body",
                f"the request body did not arrive within {took:g} s",
                "body_timeout",
                {"connection": "close"},
            )
            return None
        if not connected:
            return None
        if size > limit:
            await self._refuse(
                send, label, 413, "body", f"request body is over {limit} bytes", "body_too_large"
            )
            return None
        return b"".join(chunks)


def _replay(body: bytes, receive: Callable) -> Callable:
    """An ASGI receive that yields the already-read body once, then the real stream
    (which only reports the disconnect)."""
    done = False

    async def replay() -> dict:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reject(
    send: Callable,
    status: int,
    param: str | None,
    message: str,
    code: str,
    headers: dict[str, str] | None = None,
) -> None:
    payload = json.dumps(error_body(status, param, message, code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


# --- the app ------------------------------------------------------------------------------
class Service:
    """What the endpoints share: the engine, the batcher, the limits and the metrics."""

    def __init__(self, engine: Engine, config: ServeConfig, metrics: Metrics):
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.batcher = Batcher(
            engine.plan, config.max_batch, config.max_wait_ms / 1000.0, on_batch=metrics.on_batch
        )
        self._ids = itertools.count(1)
        self.reasoning_cap = config.limits.max_reasoning_tokens or engine.default_reasoning_tokens
        self._decoders: ThreadPoolExecutor | None = None

    @property
    def decoders(self) -> ThreadPoolExecutor:
        """The threads that parse chat content and decode images (`decode_threads` of them,
        so a burst of requests cannot start more decodes than that at once)."""
        if self._decoders is None:
            self._decoders = ThreadPoolExecutor(
                self.config.decode_threads, thread_name_prefix="autovla-decode"
            )
        return self._decoders

    def close(self) -> None:
        if self._decoders is not None:
            self._decoders.shutdown(wait=False, cancel_futures=True)
            self._decoders = None

    def deadline(self, request: Request) -> float:
        """time.monotonic() at which this request times out (set by the guard when its body
        arrived; an app called without the guard counts from now)."""
        return request.scope.get(DEADLINE_KEY) or time.monotonic() + self.config.timeout_s

    def budget(self, deadline: float) -> DecodeBudget:
        return DecodeBudget(self.config.limits, deadline=deadline)

    def options(
        self,
        *,
        mode: str,
        action_choice: str,
        temperature: float,
        top_p: float,
        seed: int | None,
        num_samples: int,
        max_reasoning_tokens: int | None,
        system: str | None,
        num_samples_field: str = "num_samples",
        reasoning_field: str = "max_reasoning_tokens",
        clamp_reasoning: bool = False,
    ) -> PlanOptions:
        lim = self.config.limits
        if num_samples > lim.max_num_samples:
            raise ServiceError(
                400, num_samples_field, f"{num_samples} plans asked, at most {lim.max_num_samples}",
                "too_many_samples",
            )  # fmt: skip
        cap = self.reasoning_cap
        if max_reasoning_tokens is not None and max_reasoning_tokens > cap:
            if not clamp_reasoning:
                raise ServiceError(
                    400, reasoning_field,
                    f"{max_reasoning_tokens} reasoning tokens asked, this server allows {cap}",
                    "too_many_tokens",
                )  # fmt: skip
            max_reasoning_tokens = cap
        return PlanOptions(
            mode=mode,
            action_choice=action_choice,
            temperature=float(temperature),
            top_p=float(top_p),
            seed=seed,
            num_samples=num_samples,
            max_reasoning_tokens=max_reasoning_tokens or cap,
            system=system,  # type: ignore[arg-type]
        )

    def new_id(self, given: str | None, prefix: str) -> str:
        return given or f"{prefix}-{next(self._ids):08d}"

    async def run(
        self, options: PlanOptions, build: Callable[[], PlanJob], deadline: float
    ) -> tuple[list[Any], Any, float]:
        """Decode (worker thread), then plan in a batch; all before the request's deadline
        (the decode itself stops between frames once it passed, see `DecodeBudget`)."""
        timeout = self.config.timeout_s
        t = time.perf_counter()
        remaining = deadline - time.monotonic()
        if remaining <= 0:  # parsing the body used it all
            raise ServiceError(
                504, None, f"no answer within the request timeout ({timeout:.3g} s)", "timeout"
            )
        loop = asyncio.get_running_loop()
        try:
            job = await asyncio.wait_for(loop.run_in_executor(self.decoders, build), remaining)
        except TimeoutError:
            raise ServiceError(
                504, None, f"decoding did not finish within the request timeout ({timeout:.3g} s)",
                "timeout",
            ) from None  # fmt: skip
        decode_s = time.perf_counter() - t
        remaining = deadline - time.monotonic()
        results, info = await self.batcher.submit(batch_key(options), job, remaining)
        self.metrics.queue_wait.observe(info.queued_s)
        return results, info, decode_s


def build_plan_job(req: PlanRequest, sample_id: str, budget: DecodeBudget) -> PlanJob:
    images: dict[str, Any] = {}
    cameras: dict[str, list[str]] = {}
    for cam in STANDARD_CAMERAS:
        cameras[cam] = []
        for t, data in enumerate(getattr(req.cameras, cam)):
            name = f"{cam}/{t}"
            images[name] = decode_image(data, f"cameras.{cam}[{t}]", budget)
            cameras[cam].append(name)
    return _job(sample_id, cameras, images, req.ego, req.instruction, req.history)


def _job(sample_id, cameras, images, ego, instruction, history) -> PlanJob:
    for cam, names in cameras.items():
        sizes = [images[n].size for n in names]
        for t, size in enumerate(sizes):
            if size != sizes[0]:
                raise ServiceError(
                    400, f"cameras.{cam}[{t}]",
                    f"frame is {size[0]}x{size[1]}, frame 0 is {sizes[0][0]}x{sizes[0][1]}: "
                    "the frames of one camera must have one size",
                    "frame_size_mismatch",
                )  # fmt: skip
    if not history:  # the model's prompt does not read the past; the schema wants one
        v = ego if isinstance(ego, dict) else ego.model_dump()
        history = constant_velocity_history(float(v.get("vx", 0.0)), float(v.get("vy", 0.0)))
    try:
        sample = DrivingSample(
            id=sample_id, source="serve", split="serve", cameras=cameras, ego=ego,
            instruction=instruction, history=history,
        )  # fmt: skip
    except ValidationError as e:  # the request was validated already; this is a safety net
        err = e.errors()[0]
        raise ServiceError(400, field_path(err["loc"]), err["msg"], "invalid_value") from None
    return PlanJob(sample, MemoryImages(images))


def constant_velocity_history(vx: float, vy: float) -> list[tuple[float, float, float]]:
    """The past a request that sends none is given: the current velocity held for 1.5 s."""
    heading = float(np.arctan2(vy, vx)) if abs(vx) + abs(vy) > 1e-6 else 0.0
    return [(-vx * 0.5 * k, -vy * 0.5 * k, 0.0 if k == 0 else heading) for k in (3, 2, 1, 0)]


def create_app(engine: Engine, config: ServeConfig | None = None, api_key: str | None = None):
    """The ASGI app (FastAPI behind the guard). Run it with `run_server` or any ASGI server."""
    config = config or ServeConfig()
    metrics = Metrics()
    service = Service(engine, config, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()  # after the server stopped taking requests
            service.close()

    app = FastAPI(
        title="autovla",
        version=__version__,
        summary="AutoVLA planning service: cameras, ego state and instruction in; 5 s plan out.",
        lifespan=lifespan,
    )
    app.state.service = service

    def count_error(request: Request, code: str) -> None:
        metrics.errors.labels(endpoint_label(request.url.path), code).inc()

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        count_error(request, exc.code)
        return JSONResponse(error_body(exc.status, exc.param, exc.message, exc.code), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(exc.errors())
        first = details[0] if details else {"field": "body", "message": "invalid request"}
        code = "unsupported_field" if first["message"] == "unknown field" else "invalid_value"
        if exc.errors() and exc.errors()[0].get("type") == "json_invalid":
            first, code = {"field": "body", "message": "not valid JSON"}, "bad_json"
        count_error(request, code)
        message = first["message"]
        total = len(exc.errors())
        if total > 1:
            shown = "see details" if total == len(details) else f"{len(details)} in details"
            message += f" (and {total - 1} more: {shown})"
        return JSONResponse(error_body(400, first["field"], message, code, details), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        count_error(request, f"http_{exc.status_code}")
        return JSONResponse(
            error_body(exc.status_code, None, str(exc.detail), f"http_{exc.status_code}"),
            exc.status_code,
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s failed", request.url.path)
        count_error(request, "internal")
        return JSONResponse(
            error_body(500, None, f"internal error ({type(exc).__name__})", "internal"), 500
        )

    @app.post("/v1/plan", response_model=PlanResponse)
    async def plan(req: PlanRequest, request: Request) -> PlanResponse:
        """Plan one driving sample; see docs/serve.md."""
        started = time.perf_counter()
        deadline = service.deadline(request)
        options = service.options(
            mode=req.mode, action_choice=req.action_choice, temperature=req.temperature,
            top_p=req.top_p, seed=req.seed, num_samples=req.num_samples,
            max_reasoning_tokens=req.max_reasoning_tokens, system=None,
        )  # fmt: skip
        sample_id = service.new_id(req.id, "plan")
        budget = service.budget(deadline)
        results, info, decode_s = await service.run(
            options, lambda: build_plan_job(req, sample_id, budget), deadline
        )
        first = results[0]
        timings = {"images": decode_s, "queue": info.queued_s, "batch": info.run_s}
        timings.update({k: float(v) for k, v in first.timings.items() if k != "total"})
        timings["plan"] = float(first.timings.get("total", info.run_s))
        timings["total"] = time.perf_counter() - started
        return PlanResponse(
            id=sample_id,
            plans=[_plan(r) for r in results],
            batch_size=info.size,
            timings=timings,
        )

    @app.post("/v1/chat/completions", response_model=ChatResponse)
    async def chat(req: ChatRequest, request: Request) -> ChatResponse:
        """The OpenAI chat subset: images or videos and the state line in, the answer out."""
        deadline = service.deadline(request)
        if req.model != engine.name:
            raise ServiceError(
                404, "model", f"model {req.model!r} is not served here (GET /v1/models)",
                "model_not_found",
            )  # fmt: skip
        which = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        cap = reasoning_cap_from_max_tokens(
            req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens,
            which,
        )
        options_kw = dict(
            mode=req.mode, action_choice=req.action_choice,
            temperature=req.temperature or 0.0,
            top_p=req.top_p if req.top_p is not None else 1.0,
            seed=req.seed, num_samples=req.n, max_reasoning_tokens=cap,
            num_samples_field="n", reasoning_field=which, clamp_reasoning=True,
        )  # fmt: skip
        sample_id = service.new_id(None, "chat")
        budget = service.budget(deadline)

        def build() -> PlanJob:
            state, frames, _system = chat_to_plan(req, engine.fmt, budget)
            images, cameras = {}, {}
            for cam, imgs in frames.items():
                cameras[cam] = [f"{cam}/{t}" for t in range(len(imgs))]
                images.update(zip(cameras[cam], imgs, strict=True))
            return _job(sample_id, cameras, images, state["ego"], state["instruction"], [])

        # The system prompt picks the planner, so the batch key: read it here (cheap), before
        # the worker thread decodes the frames.
        system = _system_of(req, engine, budget)
        options = service.options(system=system, **options_kw)
        results, _info, _ = await service.run(options, build, deadline)
        return ChatResponse(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=engine.name,
            choices=[
                ChatChoice(
                    index=i,
                    message=ChatChoiceMessage(content=r.text),
                    autovla={
                        "trajectory": r.trajectory.tolist(),
                        "mode": r.mode,
                        "reasoning": r.reasoning,
                        "action_ids": list(r.action_ids),
                        "num_generated_tokens": r.num_generated_tokens,
                    },
                )
                for i, r in enumerate(results)
            ],
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        fmt = engine.fmt
        return {
            "object": "list",
            "data": [
                {
                    "id": engine.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "autovla",
                    "autovla": {
                        "prompt_format": f"{fmt.name} v{fmt.version}",
                        "system_prompts": {
                            "dual": fmt.system_dual,
                            "action_only": fmt.system_action_only,
                        },
                        "state_line": fmt.user_state,
                        "max_reasoning_tokens": service.reasoning_cap,
                    },
                }
            ],
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "admitted": guard.admitted,
                "waiting": service.batcher.waiting}  # fmt: skip

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.waiting.set(service.batcher.waiting)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    guard = Guard(app, config, api_key, metrics)
    guard.fastapi = app  # type: ignore[attr-defined]
    guard.service = service  # type: ignore[attr-defined]
    return guard


def _plan(r: Any) -> Plan:
    return Plan(
        trajectory=[tuple(float(v) for v in p) for p in r.trajectory],
        mode=r.mode,
        reasoning=r.reasoning,
        action_ids=list(r.action_ids),
        text=r.text,
        num_generated_tokens=r.num_generated_tokens,
    )


def _system_of(req: ChatRequest, engine: Engine, budget: DecodeBudget) -> str | None:
    first = req.messages[0]
    if first.role not in ("system", "developer"):
        return None
    return system_kind(message_text(first.content, "messages[0].content", budget), engine.fmt)


# --- running it ---------------------------------------------------------------------------
def uvicorn_config(app: Any, config: ServeConfig, access_log: bool = False, **kw: Any):
    import uvicorn

    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        access_log=access_log,
        timeout_graceful_shutdown=config.shutdown_grace_s,
        lifespan="on",
        **kw,
    )


class BindError(OSError):
    """The server cannot listen on its address (port taken, address not local, ...)."""


def bind_socket(host: str, port: int) -> Any:
    """A listening socket on host:port, or BindError with one clear line. Bound here, not by
    uvicorn, whose failure to bind logs and returns as if it had served."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BindError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    family, kind, proto, _name, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise BindError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def run_server(app: Any, config: ServeConfig, access_log: bool = False) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, finish in-flight requests, exit.
    BindError (before anything is served) when host:port cannot be listened on."""
    import uvicorn

    sock = bind_socket(config.host, config.port)
    server = uvicorn.Server(uvicorn_config(app, config, access_log))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise BindError(f"the server on {config.host}:{config.port} did not start (see the log)")


class BackgroundServer:
    """A real uvicorn server on a free loopback port in a thread (tests, benchmarks)."""

    def __init__(self, app: Any, config: ServeConfig | None = None, host: str = "127.0.0.1"):
        import socket

        import uvicorn

        self.config = (config or ServeConfig()).model_copy(update={"host": host, "port": 0})
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, self.config, log_level="warning"))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful: stop accepting, let in-flight requests finish, run the shutdown."""
        self.server.should_exit = True
        self._thread.join(timeout)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._sock.close()


__all__ = ["BackgroundServer", "BindError", "check_api_key", "create_app", "run_server"]
