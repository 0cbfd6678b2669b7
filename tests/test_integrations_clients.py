"""The thin clients: importable with numpy and Pillow only; the Python client, the NAVSIM agent's
HTTP mode and the CARLA driver against the real service on loopback."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from autovla.eval.planner_adapter import ModelPlanFn
from autovla.integrations.carla_agent import AutoVLADriver, CarlaAgentConfig
from autovla.integrations.client import PlanClient, ServiceError, plan_request
from autovla.integrations.navsim_agent import AutoVLAAgent, request_from_agent_input
from autovla.model.planner import Planner
from autovla.serve.app import BackgroundServer
from tests.model_fixtures import one_torch_thread as one_torch_thread  # autouse fixture
from tests.model_fixtures import tiny_vla
from tests.serve_fixtures import REASONING, body, make_app

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "pydantic", "fastapi", "starlette", "uvicorn", "yaml", "typer",
         "rich", "safetensors", "tokenizers", "scipy", "shapely", "openai", "httpx")  # fmt: skip


def test_clients_import_without_torch_or_pydantic():
    """In a fresh interpreter where importing any heavy package fails, the three client
    modules import and do their local work (requests, config, sensors)."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ImportError("blocked in this test: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from autovla.integrations import carla_agent, client, navsim_agent
        frames = {{c: [np.zeros((32, 32, 3), np.uint8)] * 4 for c in client.CAMERAS}}
        body = client.plan_request(frames, vx=3.0, instruction="go straight", mode="fast")
        agent = carla_agent.AutoVLACarlaAgent()
        agent.setup("")
        assert len(agent.sensors()) == 6 and len(body["cameras"]["front"]) == 4
        navsim_agent.AutoVLAAgent(server_url="http://127.0.0.1:9")
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print("HEAVY", heavy)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_plan_request_checks_locally():
    frames = {c: [np.zeros((8, 8, 3), np.uint8)] * 4 for c in ("front", "front_left")}
    with pytest.raises(ValueError, match="front_right"):
        plan_request(frames, vx=1.0)
    frames["front_right"] = frames["front"]
    with pytest.raises(ValueError, match="instruction"):
        plan_request(frames, vx=1.0, instruction="left")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        plan_request({**frames, "front": [np.zeros((8, 8), np.uint8)] * 4}, vx=1.0)


@pytest.fixture(scope="module")
def server():
    with BackgroundServer(make_app(api_key="k", max_batch=4, max_wait_ms=2.0)) as s:
        yield s


def test_python_client(server):
    client = PlanClient(server.url, api_key="k")
    reply = client.plan(body(0, mode="fast", request_id="abc"))
    assert reply.id == "abc" and reply.trajectory.shape == (10, 3)
    assert reply.plans[0].mode == "fast" and reply.timings["plan"] > 0
    with pytest.raises(ServiceError) as e:
        client.plan(body(0, mode="medium"))
    assert e.value.status == 400 and e.value.param == "mode"
    with pytest.raises(ServiceError) as e:
        PlanClient(server.url, api_key="wrong").plan(body(0))
    assert e.value.status == 401


def navsim_input(seed: int = 0) -> SimpleNamespace:
    """A NAVSIM AgentInput stand-in with textured 112 x 224 frames."""
    rng = np.random.default_rng(seed)
    statuses = [
        SimpleNamespace(ego_pose=np.array([-7.5 + 2.5 * k, 0.0, 0.0]),
                        ego_velocity=np.array([5.0, 0.1]), ego_acceleration=np.array([0.2, 0.0]),
                        driving_command=np.array([1, 0, 0, 0]))
        for k in range(4)
    ]  # fmt: skip

    def cam():
        return SimpleNamespace(image=rng.integers(0, 255, (112, 224, 3), dtype=np.uint8))

    cams = [SimpleNamespace(cam_f0=cam(), cam_l0=cam(), cam_r0=cam()) for _ in range(4)]
    return SimpleNamespace(ego_statuses=statuses, cameras=cams)


def test_navsim_http_mode_equals_in_process(server):
    planner = Planner(tiny_vla(), max_reasoning_tokens=REASONING)
    local = AutoVLAAgent(plan_fn=ModelPlanFn(planner, mode="fast"))
    remote = AutoVLAAgent(server_url=server.url, api_key="k", mode="fast")
    remote.initialize()  # checks that the service answers
    for seed in (0, 1):
        inp = navsim_input(seed)
        want = local.compute_trajectory(inp)
        got = remote.compute_trajectory(inp)
        assert got.shape == (8, 3)
        np.testing.assert_allclose(got, want, atol=1e-9)
    req = request_from_agent_input(navsim_input(), mode="fast")
    assert req["instruction"] == "turn left" and req["ego"]["vx"] == 5.0
    with pytest.raises(ValueError, match="exactly one of"):
        AutoVLAAgent(model_dir="m", server_url=server.url)
    down = AutoVLAAgent(server_url="http://127.0.0.1:9", timeout=2)
    with pytest.raises(ServiceError, match=r"127\.0\.0\.1:9"):
        down.initialize()


def test_carla_driver_against_the_real_service(server):
    cfg = CarlaAgentConfig(server_url=server.url, mode="fast")
    driver = AutoVLADriver(cfg, PlanClient(server.url, api_key="k"))
    rng = np.random.default_rng(0)
    for k in range(31):
        images = {c: rng.integers(0, 255, (72, 128, 3), dtype=np.uint8) for c in
                  ("front", "front_left", "front_right")}  # fmt: skip
        control = driver.step(k / 20, images, 2.0, (0.0, 0.0), 0.0, 0.0, math.pi / 2)
    assert driver.calls == 1 and driver.failures == 0 and driver.plan is not None
    assert control.reason in ("drive",) and -1.0 <= control.steer <= 1.0
    assert driver.plan.world.shape == (11, 3)
