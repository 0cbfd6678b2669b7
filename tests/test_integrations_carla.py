"""The CARLA / Bench2Drive agent without CARLA: controllers on hand-computed cases, the 2 Hz
frame buffer, route commands, the emergency brake, and closed loops with a stand-in vehicle
and a stand-in planning server (the real service is used in test_integrations_clients)."""

from __future__ import annotations

import base64
import io
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from autovla.integrations.carla_agent import (
    PID,
    AutoVLACarlaAgent,
    AutoVLADriver,
    CarlaAgentConfig,
    LocalFrame,
    PIDGains,
    RouteCommands,
    compass_to_heading,
    get_entry_point,
    load_agent_config,
    plan_speed,
    pure_pursuit,
    road_option_name,
)
from autovla.integrations.client import CAMERAS, PlanClient

HZ = 20
DT = 1.0 / HZ


# --- a stand-in planning server (standard library only) --------------------------------------
def arc_plan(speed: float, radius: float | None) -> list[list[float]]:
    """10 poses at 0.5 s of constant speed along a left arc (straight when radius is None)."""
    out = []
    for k in range(1, 11):
        s = speed * 0.5 * k
        if radius is None:
            out.append([s, 0.0, 0.0])
        else:
            th = s / radius
            out.append([radius * math.sin(th), radius * (1 - math.cos(th)), th])
    return out


class StandIn:
    """Answers POST /v1/plan with `plan_for(request)`; records requests; can fail on demand."""

    def __init__(self, plan_for=lambda req: arc_plan(5.0, None)):
        self.requests: list[dict] = []
        self.fail_with: int | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(req)
                if outer.fail_with is not None:
                    status, payload = outer.fail_with, {"error": {"message": "boom"}}
                else:
                    plan = {"trajectory": plan_for(req), "mode": "fast", "reasoning": None,
                            "action_ids": [0] * 10, "text": "",
                            "num_generated_tokens": 10}  # fmt: skip
                    status, payload = 200, {"id": "x", "plans": [plan], "batch_size": 1}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def frame_value(b64: str) -> int:
    """The grey level of a (uniform) stand-in frame after its JPEG round trip."""
    img = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    return int(np.asarray(img)[4, 4, 0])


def images_at(tick: int) -> dict[str, np.ndarray]:
    return {c: np.full((36, 64, 3), 4 * (tick % 60), np.uint8) for c in CAMERAS}


# --- controllers, worked by hand ---------------------------------------------------------------
def test_pid_hand_computed():
    pid = PID(PIDGains(kp=2.0, ki=0.5, kd=0.1))
    assert pid.step(1.0, 0.1) == pytest.approx(2.0 * 1.0 + 0.5 * 0.1)  # no derivative yet
    # integral 0.1 + 0.05 = 0.15; derivative (0.5 - 1.0) / 0.1 = -5
    assert pid.step(0.5, 0.1) == pytest.approx(2.0 * 0.5 + 0.5 * 0.15 + 0.1 * -5.0)
    capped = PID(PIDGains(kp=0.0, ki=1.0, windup=0.2))
    assert capped.step(10.0, 0.1) == pytest.approx(0.2)  # integral 1.0 clipped to 0.2


def test_pure_pursuit_on_a_circle():
    """Any point of a circle of radius R through the car, tangent to its heading, needs the
    steering angle atan(L / R): the chord to it is 2R sin(a) at angle a."""
    cfg = CarlaAgentConfig(wheelbase_m=2.9, lookahead_min_m=5.0, lookahead_gain_s=0.0)
    r = 20.0
    th = np.linspace(0.05, 1.0, 20)
    left = np.column_stack([r * np.sin(th), r * (1 - np.cos(th))])
    assert pure_pursuit(left, 5.0, cfg) == pytest.approx(math.atan(2.9 / r))
    right = left * [1, -1]
    assert pure_pursuit(right, 5.0, cfg) == pytest.approx(-math.atan(2.9 / r))
    straight = np.column_stack([np.arange(1, 11.0), np.zeros(10)])
    assert pure_pursuit(straight, 5.0, cfg) == 0.0
    assert pure_pursuit(-straight, 5.0, cfg) == 0.0  # nothing ahead: wheels straight
    assert pure_pursuit(np.full((10, 2), 0.2), 0.0, cfg) == 0.0  # a standing plan


def test_plan_speed_and_frames():
    times = np.arange(11) * 0.5
    arc = 4.0 * times
    assert plan_speed(times, arc, 0.3, 1.0) == pytest.approx(4.0)
    slowing = np.concatenate([[0.0], np.cumsum([2.0, 1.5, 1.0, 0.5, 0, 0, 0, 0, 0, 0])])
    # s(0.5) = 2.0, s(1.5) = 4.5: 2.5 m in 1 s
    assert plan_speed(times, slowing, 0.5, 1.0) == pytest.approx(2.5)
    frame = LocalFrame(0.0, 0.0)
    # one micro-degree of latitude is 6378137 * pi / 180 * 1e-6 = 0.111319 m north
    np.testing.assert_allclose(frame.xy(1e-6, 0.0), [0.0, 0.1113195], atol=1e-7)
    np.testing.assert_allclose(frame.xy(0.0, 1e-6), [0.1113195, 0.0], atol=1e-7)
    assert compass_to_heading(0.0) == pytest.approx(math.pi / 2)  # north
    assert compass_to_heading(math.pi / 2) == pytest.approx(0.0)  # east
    assert compass_to_heading(math.pi) == pytest.approx(-math.pi / 2)  # south


def test_route_commands():
    assert road_option_name(4) == "LANEFOLLOW" and road_option_name("left") == "LEFT"

    class Opt:
        name = "CHANGELANERIGHT"

    assert road_option_name(Opt()) == "CHANGELANERIGHT"
    route = RouteCommands(
        np.array([[0, 0], [20, 0], [40, 0]]), ["LANEFOLLOW", "LEFT", "RIGHT"], 7.5
    )
    assert route.next_option(np.array([0.0, 0.0])) == "LEFT"  # the first point is passed
    assert route.next_option(np.array([10.0, 0.0])) == "LEFT"
    assert route.next_option(np.array([14.0, 0.0])) == "RIGHT"
    assert route.next_option(np.array([45.0, 0.0])) == "RIGHT"  # the last one stays


def test_config_from_json(tmp_path):
    p = tmp_path / "agent.json"
    given = {"server_url": "http://10.0.0.2:9000", "image_width": 800,
             "speed_pid": {"kp": 1.0, "ki": 0.1}, "commands": {"VOID": "unknown"}}  # fmt: skip
    p.write_text(json.dumps(given))
    cfg = load_agent_config(p)
    assert cfg.server_url == "http://10.0.0.2:9000" and cfg.image_width == 800
    assert cfg.speed_pid == PIDGains(kp=1.0, ki=0.1)
    assert load_agent_config("") == CarlaAgentConfig()
    for bad, match in [({"sever_url": "x"}, "unknown key 'sever_url'"),
                       ({"timeout_s": "soon"}, "timeout_s must be a finite float"),
                       ({"image_width": 640.5}, "image_width must be a finite int"),
                       ({"speed_pid": {"ki": 1.0}}, "speed_pid"),
                       ({"commands": {"LEFT": "go left"}}, "not model instructions"),
                       ({"mode": "medium"}, "mode must be")]:  # fmt: skip
        p.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            load_agent_config(p)


def test_sensors_at_the_models_camera_layout():
    agent = AutoVLACarlaAgent()
    agent.setup("")
    sensors = {s["id"]: s for s in agent.sensors()}
    assert get_entry_point() == "AutoVLACarlaAgent"
    assert set(sensors) == {*CAMERAS, "imu", "gnss", "speed"}
    assert [sensors[c]["fov"] for c in CAMERAS] == [70.0, 70.0, 70.0]
    # CARLA's yaw turns clockwise and its y points right: front-left is at yaw -55, y < 0
    assert [sensors[c]["yaw"] for c in CAMERAS] == [0.0, -55.0, 55.0]
    assert sensors["front_left"]["y"] < 0 < sensors["front_right"]["y"]
    assert sensors["speed"]["type"] == "sensor.speedometer"


# --- the driver: buffering, calls, brake -------------------------------------------------------
def drive_still(driver, ticks, speed=0.0, accel=(0.3, -0.2)):
    return [driver.step(k * DT, images_at(k), speed, accel, 0.0, 0.0, math.pi / 2)
            for k in range(ticks)]  # fmt: skip


def test_buffer_is_2hz_oldest_first_and_calls_at_2hz():
    with StandIn() as server:
        cfg = CarlaAgentConfig(server_url=server.url)
        driver = AutoVLADriver(cfg)
        driver.set_route([(0.0, 0.0, 4), (0.0, 0.0002, 1), (0.0, 0.0004, 4)])  # ~22 m apart
        controls = drive_still(driver, 60, speed=0.5)
    assert [c.reason for c in controls[:30]] == ["warmup"] * 30
    assert all(c.brake == 1.0 and c.throttle == 0.0 for c in controls[:30])
    assert controls[30].reason == "drive"
    # frames enter the buffer every 0.5 s (ticks 0, 10, 20, ...); calls start when it is full
    assert len(server.requests) == 3  # ticks 30, 40, 50
    first, second = server.requests[0], server.requests[1]
    assert [frame_value(f) for f in first["cameras"]["front"]] == [0, 40, 80, 120]
    assert [frame_value(f) for f in second["cameras"]["front_right"]] == [40, 80, 120, 160]
    assert first["ego"] == {"vx": 0.5, "vy": 0.0, "ax": 0.3, "ay": -0.2}
    assert first["instruction"] == "turn left"  # the next route point is a LEFT
    assert first["mode"] == "auto"


def test_emergency_brake_when_the_service_fails():
    with StandIn() as server:
        driver = AutoVLADriver(CarlaAgentConfig(server_url=server.url))
        controls = drive_still(driver, 35)
        assert controls[-1].reason == "drive" and controls[-1].throttle > 0
        server.fail_with = 500
        later = [driver.step(k * DT, images_at(k), 0.0, (0, 0), 0.0, 0.0, math.pi / 2)
                 for k in range(35, 45)]  # fmt: skip
    assert later[-1].reason == "unreachable" and later[-1].brake == 1.0
    assert later[-1].throttle == 0.0 and driver.failures == 1
    # the server is gone altogether (connection refused): still a brake, not an exception
    driver = AutoVLADriver(CarlaAgentConfig(server_url=server.url, timeout_s=1.0))
    controls = drive_still(driver, 35)
    assert controls[-1].reason == "unreachable" and controls[-1].brake == 1.0
    assert "no answer" in driver.last_error or "connection" in driver.last_error


def test_stale_plans_are_not_driven():
    with StandIn() as server:
        cfg = CarlaAgentConfig(server_url=server.url, plan_hz=0.5, stale_plan_s=1.0)
        driver = AutoVLADriver(cfg)
        controls = [driver.step(k * DT, images_at(k), 0.0, (0, 0), 0.0, 0.0, math.pi / 2)
                    for k in range(int(6.0 * HZ) + 30)]  # fmt: skip
    first_plan = int(6.0 * HZ)  # 4 frames at 0.5 Hz: full at 6 s
    assert controls[first_plan].reason == "drive"
    assert controls[first_plan + int(0.9 * HZ)].reason == "drive"
    assert controls[first_plan + int(1.2 * HZ)].reason == "stale"


# --- closed loop: a stand-in car follows the plans ------------------------------------------
class StandInCar:
    """A kinematic bicycle; throttle and brake set the acceleration (m/s^2)."""

    def __init__(self, wheelbase: float = 2.9, max_steer: float = 1.22):
        self.x = self.y = self.yaw = self.v = 0.0
        self.accel = 0.0
        self.wheelbase, self.max_steer = wheelbase, max_steer
        self.frame = LocalFrame(0.0, 0.0)

    def apply(self, c) -> None:
        self.accel = 4.0 * c.throttle - 8.0 * c.brake - 0.05 * self.v
        delta = -c.steer * self.max_steer  # CARLA steer > 0 turns right
        self.v = max(0.0, self.v + self.accel * DT)
        self.yaw += self.v * math.tan(delta) / self.wheelbase * DT
        self.x += self.v * math.cos(self.yaw) * DT
        self.y += self.v * math.sin(self.yaw) * DT

    def gnss(self) -> tuple[float, float]:
        return self.y / self.frame._ky, self.x / self.frame._kx

    def compass(self) -> float:
        return math.pi / 2 - self.yaw


@pytest.mark.parametrize("radius", [None, 40.0])
def test_closed_loop_tracks_the_plan(radius):
    with StandIn(lambda req: arc_plan(6.0, radius)) as server:
        driver = AutoVLADriver(CarlaAgentConfig(server_url=server.url))
        car = StandInCar()
        yaws, speeds, ys = [], [], []
        for k in range(int(25 * HZ)):
            lat, lon = car.gnss()
            c = driver.step(k * DT, images_at(k), car.v, (car.accel, 0.0), lat, lon, car.compass())
            car.apply(c)
            yaws.append(car.yaw)
            speeds.append(car.v)
            ys.append(car.y)
    assert abs(np.mean(speeds[-5 * HZ :]) - 6.0) < 0.6  # the PID holds the planned speed
    if radius is None:
        assert max(abs(y) for y in ys) < 0.2 and abs(yaws[-1]) < 0.02
    else:  # the planned turn rate is v / R = 0.15 rad/s
        rate = (yaws[-1] - yaws[-5 * HZ]) / 5.0
        assert rate == pytest.approx(6.0 / radius, rel=0.15)


# --- the leaderboard-facing class --------------------------------------------------------------
def test_run_step_with_carla_shaped_inputs(tmp_path):
    with StandIn() as server:
        conf = tmp_path / "agent.json"
        conf.write_text(json.dumps({"server_url": server.url}))
        agent = AutoVLACarlaAgent()
        agent.setup(str(conf))
        agent._global_plan = [({"lat": 0.0, "lon": 0.0, "z": 0.0}, 4),
                              ({"lat": 0.0, "lon": 0.0003, "z": 0.0}, 2)]  # fmt: skip
        bgra = np.zeros((36, 64, 4), np.uint8)
        bgra[..., 0] = 255  # blue in CARLA's BGRA
        for k in range(31):
            data = {c: (k, bgra) for c in CAMERAS}
            data["imu"] = (k, np.array([0.5, 0.25, 9.81, 0.0, 0.0, 0.0, math.pi / 2]))
            data["gnss"] = (k, np.array([0.0, 0.0, 0.0]))
            data["speed"] = (k, {"speed": 1.0})
            control = agent.run_step(data, k * DT)
        agent.destroy()
    (req,) = server.requests
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(req["cameras"]["front"][0]))))
    assert rgb[4, 4, 2] > 240 and rgb[4, 4, 0] < 15  # blue stayed blue
    assert req["instruction"] == "turn right" and req["ego"]["ay"] == -0.25  # CARLA y is right
    assert control.reason == "drive" and control.throttle > 0 and abs(control.steer) < 1e-6


def test_client_keeps_one_connection_per_thread():
    with StandIn() as server:
        client = PlanClient(server.url)
        for _ in range(3):
            client.call("POST", "/v1/plan", {"x": 1})
        assert client._local.conn is not None
        client.close()
        assert client._local.conn is None
