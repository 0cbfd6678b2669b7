"""Operating the service: bearer token, bounded queue (429), timeouts (504), graceful shutdown
(in-flight requests finish), and the `autovla serve` command itself under SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from autovla.integrations.client import PlanClient, ServiceError, ServiceUnavailable
from autovla.serve.app import BackgroundServer
from tests.model_fixtures import one_torch_thread as one_torch_thread  # autouse fixture
from tests.model_fixtures import tiny_vla
from tests.serve_fixtures import GatedEngine, body, make_app

ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_bearer_token():
    with TestClient(make_app(api_key="s3cret-token")) as c:
        assert c.get("/healthz").status_code == 200  # open: load balancers probe it
        assert c.get("/openapi.json").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"},
                        {"Authorization": "Basic s3cret-token"}):  # fmt: skip
            resp = c.post("/v1/plan", json=body(0, mode="fast"), headers=headers)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
            assert resp.headers["www-authenticate"] == "Bearer"
            assert c.get("/metrics", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert c.post("/v1/plan", json=body(0, mode="fast"), headers=good).status_code == 200
        assert c.get("/v1/models", headers=good).status_code == 200


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("AUTOVLA_API_KEY", "from-env")
    assert PlanClient("http://127.0.0.1:1").api_key == "from-env"


def test_full_queue_answers_429_and_timeouts_504():
    eng = GatedEngine()
    app = make_app(eng, max_batch=1, max_queue=2, timeout_s=20.0)
    with BackgroundServer(app) as server:
        client = PlanClient(server.url)
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(client.plan, body(i, mode="fast")) for i in range(2)]
            wait_for(lambda: client.health()["admitted"] == 2)
            with pytest.raises(ServiceError) as full:
                client.plan(body(2, mode="fast"))
            assert full.value.status == 429 and full.value.code == "queue_full"
            eng.gate.set()
            assert [len(f.result(30).trajectory) for f in held] == [10, 10]
    eng = GatedEngine()
    with BackgroundServer(make_app(eng, timeout_s=0.3)) as server:
        client = PlanClient(server.url)
        t = time.perf_counter()
        with pytest.raises(ServiceError) as late:
            client.plan(body(0, mode="fast"))
        assert late.value.status == 504 and late.value.code == "timeout"
        assert time.perf_counter() - t < 5
        eng.gate.set()
        assert client.health()["status"] == "ok"


def test_graceful_shutdown_finishes_in_flight_requests():
    eng = GatedEngine()
    server = BackgroundServer(make_app(eng, max_batch=4, max_wait_ms=0.0))
    with server:
        client = PlanClient(server.url, timeout=30)
        with ThreadPoolExecutor(3) as pool:
            inflight = [pool.submit(client.plan, body(i, mode="fast")) for i in range(3)]
            wait_for(lambda: len(eng.batches) >= 1)
            wait_for(lambda: PlanClient(server.url).health()["admitted"] == 3)
            stopper = threading.Thread(target=server.stop)
            stopper.start()  # SIGTERM's path: should_exit -> stop accepting -> drain
            wait_for(lambda: _refused(server.url))
            assert stopper.is_alive()  # still draining: the requests are not answered yet
            eng.gate.set()
            replies = [f.result(30) for f in inflight]
            stopper.join(30)
    assert not stopper.is_alive() and not server._thread.is_alive()
    assert [len(r.trajectory) for r in replies] == [10, 10, 10]


def _refused(url: str) -> bool:
    try:
        PlanClient(url, timeout=1).health()
    except ServiceUnavailable:
        return True
    return False


@pytest.mark.slow
def test_cli_serve_sigterm(tmp_path):
    """`autovla serve` in its own process: answers, then on SIGTERM finishes the request it
    holds and exits."""
    model = tmp_path / "model"
    tiny_vla().save_pretrained(model)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "AUTOVLA_API_KEY": "k"}
    cmd = [sys.executable, "-m", "autovla", "serve", "--model", str(model), "--port", str(port),
           "--threads", "1", "--max-wait-ms", "1500"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = PlanClient(f"http://127.0.0.1:{port}", api_key="k", timeout=60)
        wait_for(lambda: proc.poll() is not None or not _refused(client.url), timeout=120)
        assert proc.poll() is None, proc.stdout.read().decode()
        assert client.models()["data"][0]["id"] == "model"
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.plan, body(0, mode="fast"))
            wait_for(lambda: client.health()["waiting"] == 1)  # held by the 1.5 s batch window
            proc.send_signal(signal.SIGTERM)
            reply = pending.result(60)
        assert len(reply.trajectory) == 10
        # uvicorn re-raises the signal once it has drained, so the parent sees SIGTERM
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stdout.read().decode()
    assert "serving model on http://127.0.0.1" in log
    assert "Application shutdown complete" in log  # the lifespan (batcher drain) ran
