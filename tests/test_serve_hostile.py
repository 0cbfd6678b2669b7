"""The service and its client against hostile input: super-linear text, slow or trickling
bodies, huge bodies of many items, JPEGs of many scans, degenerate frames, a root_path prefix,
an empty API key, a taken port, a planner cache grown by request options, and malformed or
trickled answers to the client. Loopback only."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import autovla.serve.schema as serve_schema
from autovla.cli import app as cli_app
from autovla.integrations.client import BadAnswer, PlanClient, ServiceError, ServiceUnavailable
from autovla.serve.app import BindError, bind_socket, create_app, uvicorn_config
from autovla.serve.chat import parse_state
from autovla.serve.config import ServeConfig, ServeLimits
from autovla.serve.engine import Engine, PlanOptions
from autovla.serve.errors import ServiceError as RequestError
from autovla.serve.images import DecodeBudget, decode_image, jpeg_scans
from tests.model_fixtures import dataset, tiny_vla
from tests.model_fixtures import one_torch_thread as one_torch_thread  # autouse fixture
from tests.serve_fixtures import body, engine, make_app, png_b64

ROOT = Path(__file__).resolve().parents[1]

STATE = "Current speed: 5.000 m/s. Current acceleration: 0.200 m/s^2.\nInstruction: go straight."


def chat_body(text: str, url: str = "x") -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}}] * 12
    return {"model": "tiny", "messages": [{"role": "user", "content": [
        *parts, {"type": "text", "text": text}]}]}  # fmt: skip


def error_of(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text[:500]
    return resp.json()["error"]


# --- 1. chat text: linear parsing, bounded length, the timeout from the body on ---------------
@pytest.mark.slow  # ~8 s: large adversarial texts, timed against each other
def test_state_line_parse_is_linear():
    fmt = tiny_vla().fmt
    odd = STATE.replace(" ", "  \t").replace("Current speed", "CURRENT\n speed")
    assert parse_state(odd, "f", fmt) == {
        "ego": {"vx": 5.0, "ax": 0.2}, "instruction": "go straight"}  # fmt: skip
    n = 40_000  # the old pattern took ~6 s on 40k spaces (quadratic); linear: milliseconds
    for text in (" " * n, " \t\n" * (n // 3), "Current speed: " * (n // 15),
                 "Current speed: " + "1" * n, "Current speed: 1 m/s. " * (n // 21)):  # fmt: skip
        t = time.perf_counter()
        with pytest.raises(RequestError) as e:
            parse_state(text, "messages[0].content", fmt)
        assert e.value.code == "missing_state"
        assert time.perf_counter() - t < 0.5


def test_chat_text_over_the_limit_is_refused_before_parsing():
    with TestClient(make_app(limits={"max_text_chars": 1000})) as c:
        resp = c.post("/v1/chat/completions", json=chat_body(STATE + " " * 1000))
        err = error_of(resp, 413)
        assert err["param"] == "messages[0].content[12].text" and err["code"] == "text_too_long"


def test_timeout_counts_from_the_body_received(monkeypatch):
    """Parsing and validating the body is inside the request timeout: a request whose
    validation alone takes longer gets a 504, not a plan after a fresh timeout."""

    def slow_name_problem(name):
        time.sleep(0.6)
        return None

    monkeypatch.setattr(serve_schema, "name_problem", slow_name_problem)
    with TestClient(make_app(timeout_s=0.3)) as c:
        err = error_of(c.post("/v1/plan", json=body(0, mode="fast", request_id="slow")), 504)
        assert err["code"] == "timeout"


def test_decoding_stops_at_the_deadline():
    budget = DecodeBudget(ServeLimits(), deadline=time.monotonic() - 1)
    with pytest.raises(RequestError) as e:
        decode_image(png_b64(32, 32), "cameras.front[1]", budget)
    assert e.value.status == 504 and e.value.param == "cameras.front[1]"


# --- 9. schema errors name the JSON path of the bad field ---------------------------------------
def test_schema_errors_name_the_json_path():
    with TestClient(make_app()) as c:
        b = chat_body(STATE)
        b["messages"][0]["content"][3] = {"type": "image_url", "image_url": {"url": 7}}
        err = error_of(c.post("/v1/chat/completions", json=b), 400)
        assert err["param"] == "messages[0].content[3].image_url.url"  # not .image_url.image_url
        b = chat_body(STATE)
        b["messages"][0]["content"][12] = {"type": "text", "text": STATE, "lang": "en"}
        err = error_of(c.post("/v1/chat/completions", json=b), 400)
        assert err["param"] == "messages[0].content[12].lang" and err["code"] == "unsupported_field"
        b = chat_body(STATE)
        b["messages"][0]["content"] = [{"type": "text", "text": "x"}] * 65
        err = error_of(c.post("/v1/chat/completions", json=b), 400)
        assert err["param"] == "messages[0].content" and "at most 64" in err["message"]
        b = body(0)
        b["cameras"]["front"][2] = ""
        assert error_of(c.post("/v1/plan", json=b), 400)["param"] == "cameras.front[2]"


# --- 2. many JSON items: refused before parsing; validation errors bounded ----------------------
def test_bodies_of_many_items_are_refused_small():
    with TestClient(make_app()) as c:
        b = body(0)
        b["history"] = ["x"] * 30_000
        resp = c.post("/v1/plan", json=b)
        err = error_of(resp, 413)
        assert err["param"] == "body" and err["code"] == "too_many_items"
        b = body(0)
        b["history"] = ["x"] * 5_000  # under max_json_items: the schema refuses it, briefly
        resp = c.post("/v1/plan", json=b)
        err = error_of(resp, 400)
        assert err["param"] == "history" and len(resp.content) < 5_000
        assert len(err["details"]) <= 20


# --- 3. images: JPEG scans, degenerate frames (422 naming the frame) ---------------------------
def _progressive_jpeg(width: int = 224, height: int = 112) -> bytes:
    im = Image.effect_noise((width, height), 60).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", progressive=True, quality=80)
    return buf.getvalue()


def test_jpeg_of_many_scans_is_refused_before_decoding():
    data = _progressive_jpeg()
    assert 1 < jpeg_scans(data) <= ServeLimits().max_jpeg_scans
    with TestClient(make_app()) as c:
        b = body(0)
        b["cameras"]["front"] = [base64.b64encode(data).decode()] * 4
        assert c.post("/v1/plan", json=b).status_code == 200  # progressive JPEGs are fine
        first, eoi = data.index(b"\xff\xda"), data.rindex(b"\xff\xd9")
        scans = data[first:eoi]  # every scan again, 20 times: ~200 passes over the image
        bomb = data[:eoi] + scans * 20 + data[eoi:]
        b["cameras"]["front"][2] = base64.b64encode(bomb).decode()
        err = error_of(c.post("/v1/plan", json=b), 400)
        assert err["param"] == "cameras.front[2]" and err["code"] == "too_many_scans"


@pytest.mark.parametrize(
    ("size", "code"),
    [((27, 27), "image_too_small"), ((1, 1), "image_too_small"),
     ((5700, 28), "bad_aspect_ratio"), ((28, 5700), "bad_aspect_ratio")],
)  # fmt: skip
def test_degenerate_frames_are_422_naming_the_frame(size, code):
    with TestClient(make_app()) as c:
        b = body(0)
        b["cameras"]["front_left"][2] = png_b64(*size)
        err = error_of(c.post("/v1/plan", json=b), 422)
        assert err["param"] == "cameras.front_left[2]" and err["code"] == code
        assert err["message"].startswith("cameras.front_left[2]: ")


# --- 4. slowloris: receiving slots, not admitted ones; 408 after body_timeout_s --------------
def _trickler(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/plan HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100000\r\n\r\n{")  # fmt: skip
    return s


def _read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (headers and body may come apart)."""
    s.settimeout(10)
    chunks = []
    while chunk := s.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_trickled_bodies_hold_no_admission_slot():
    from autovla.serve.app import BackgroundServer

    app = make_app(max_queue=1, max_batch=1, max_receiving=2, body_timeout_s=1.5)
    with BackgroundServer(app) as server:
        client = PlanClient(server.url, timeout=30)
        slow = [_trickler(server.port), _trickler(server.port)]
        deadline = time.monotonic() + 10
        while client.health()["status"] != "ok" or app.receiving < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(ServiceError) as busy:  # both receiving slots are taken
            client.plan(body(0, mode="fast"))
        assert busy.value.status == 429 and busy.value.code == "too_many_receiving"
        slow[0].close()  # a disconnect frees its slot
        deadline = time.monotonic() + 10
        while app.receiving > 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # One body still trickles, max_queue is 1: the complete request is admitted anyway.
        assert len(client.plan(body(0, mode="fast")).trajectory) == 10
        answer = _read_all(slow[1])
        assert answer.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in answer
        slow[1].close()


# --- 5. root_path: the guard checks the path the router serves ---------------------------------
def test_root_path_prefix_does_not_bypass_the_body_limit():
    guard = make_app(limits={"max_body_bytes": 4096})
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn_config(guard, ServeConfig(), root_path="/api", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        big = body(0)
        big["history"] = [[0.0, 0.0, 0.0]] * 40  # ~5 KB more than the images
        raw = json.dumps(big).encode()
        for path in ("/v1/plan", "/api/v1/plan", "/api/x"):
            conn = socket.create_connection(("127.0.0.1", port))
            conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)  # fmt: skip
            conn.settimeout(30)
            answer = conn.recv(4096)
            conn.close()
            assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:200])
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


# --- 6. the planner cache is bounded ------------------------------------------------------------
def test_planner_cache_is_lru_bounded():
    eng = Engine(tiny_vla(), "tiny", max_planners=2)
    planners = [eng.planner(PlanOptions(max_reasoning_tokens=k)) for k in (5, 6, 7)]
    assert len(eng._planners) == 2
    assert eng.planner(PlanOptions(max_reasoning_tokens=7)) is planners[2]  # kept, reused
    eng.planner(PlanOptions(max_reasoning_tokens=6))  # 6 is now the most recent
    eng.planner(PlanOptions(max_reasoning_tokens=8))  # evicts 7, the least recent
    keys = [k[1] for k in eng._planners]
    assert keys == [6, 8]


# --- 7, 8. start-up: a taken port and an empty API key are one-line errors, exit 1 -------------
def test_taken_port_is_an_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(BindError, match=f"127.0.0.1:{port}"):
            bind_socket("127.0.0.1", port)
        r = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path), "--port", str(port)])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], r.output


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--api-key", ""], {}), (["--api-key", "  "], {}), ([], {"AUTOVLA_API_KEY": ""})],
)
def test_empty_api_key_is_refused(tmp_path, args, env):
    with pytest.raises(ValueError, match="empty"):
        create_app(engine(), api_key="")
    r = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path), "--port", "0", *args],
                           env=env)  # fmt: skip
    assert r.exit_code == 1, r.output
    assert "empty" in r.output and len(r.output.strip().splitlines()) == 1


# --- 10. the client: malformed answers and a total deadline ------------------------------------
class _Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers: ClassVar[dict[str, bytes]] = {}
    mode = "ok"

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if _Hostile.mode == "drip":
            self.send_response(200)
            self.send_header("content-length", "100")
            self.end_headers()
            for _ in range(8):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    break
                time.sleep(0.5)
            self.close_connection = True
            return
        data = _Hostile.answers[_Hostile.mode]
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


POSE = [0.5, 0.0, 0.0]
GOOD_PLAN = {"trajectory": [POSE] * 10, "mode": "fast", "reasoning": None, "action_ids": [1] * 10,
             "text": "t", "num_generated_tokens": 11}  # fmt: skip


def _answer(**plan) -> bytes:
    return json.dumps({"id": "x", "plans": [{**GOOD_PLAN, **plan}], "batch_size": 1}).encode()


_Hostile.answers = {
    "ok": _answer(),
    "html": b"<html>502 Bad Gateway</html>",
    "empty_object": b"{}",
    "list": b"[1, 2]",
    "plans_str": b'{"id": "x", "plans": "abc"}',
    "plans_empty": b'{"id": "x", "plans": []}',
    "traj_flat": _answer(trajectory=[1, 2]),
    "traj_nan": _answer().replace(b"[0.5, 0.0, 0.0]", b"[NaN, 0.0, 0.0]", 1),
    "traj_str": _answer(trajectory=[["a", 0, 0]] * 10),
    "ids_float": _answer(action_ids=[1.5] * 10),
    "mode_missing": json.dumps({"id": "x", "plans": [{"trajectory": [POSE]}]}).encode(),
    "id_int": _answer().replace(b'"id": "x"', b'"id": 3'),
}
FIELDS = {"html": "body", "empty_object": "plans", "list": "body", "plans_str": "plans",
          "plans_empty": "plans", "traj_flat": "plans[0].trajectory[0]",
          "traj_nan": "body", "traj_str": "plans[0].trajectory[0][0]",
          "ids_float": "plans[0].action_ids[0]", "mode_missing": "plans[0].action_ids",
          "id_int": "id"}  # fmt: skip


@pytest.fixture(scope="module")
def hostile():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("mode", sorted(FIELDS))
def test_client_refuses_malformed_answers(hostile, mode):
    _Hostile.mode = mode
    with pytest.raises(BadAnswer) as e:
        PlanClient(hostile, timeout=10).plan({})
    assert f"malformed answer: {FIELDS[mode]}" in str(e.value), str(e.value)
    _Hostile.mode = "ok"
    assert PlanClient(hostile, timeout=10).plan({}).trajectory.shape == (10, 3)


def test_client_deadline_covers_the_whole_call(hostile):
    _Hostile.mode = "drip"  # a byte every 0.5 s: no socket operation ever times out
    t = time.perf_counter()
    with pytest.raises(ServiceUnavailable, match="within the timeout"):
        PlanClient(hostile, timeout=1.0).plan({})
    assert time.perf_counter() - t < 2.5


# --- 11. the docs' chat example runs as written against a served model -------------------------
def test_docs_chat_example_runs():
    text = (ROOT / "docs" / "serve.md").read_text()
    section = text[text.index("### `POST /v1/chat/completions`") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    root, samples = dataset()
    urls = [
        "data:image/png;base64," + base64.b64encode((root / rel).read_bytes()).decode()
        for cam in ("front", "front_left", "front_right")
        for rel in samples[0].cameras[cam]
    ]
    from autovla.serve.app import BackgroundServer

    with BackgroundServer(make_app(api_key="doc-key")) as server:
        assert "http://127.0.0.1:8000/v1" in code
        scope = {"KEY": "doc-key", "twelve_data_urls": urls}
        exec(code.replace("http://127.0.0.1:8000", server.url), scope)
    out = scope["out"]
    assert out.model == "tiny" and len(out.choices[0].model_extra["autovla"]["trajectory"]) == 10


@pytest.mark.parametrize(
    "path,root,routed",
    [
        ("/v1/plan", "", "/v1/plan"),
        ("/api/v1/plan", "/api", "/v1/plan"),
        ("/api", "/api", ""),
        ("/apiv1/plan", "/api", "/apiv1/plan"),  # a prefix only at a segment boundary
        ("/v1/plan", "/api", "/v1/plan"),
        ("/api/", "/api", "/"),
    ],
)
def test_the_fallback_route_rule(path, root, routed) -> None:
    """Starlette 1.x's rule (its function is private; the guard falls back to this copy)."""
    from autovla.serve.app import _strip_root_path

    assert _strip_root_path({"path": path, "root_path": root}) == routed
