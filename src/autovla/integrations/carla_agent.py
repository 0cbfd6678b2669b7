"""A CARLA leaderboard / Bench2Drive agent that drives with plans from `autovla serve`.

Runs in CARLA's Python with only the standard library, numpy and Pillow (no torch): the model
lives in an `autovla serve` process, possibly in another environment or on another machine
(docs/carla.md). Per simulation tick (20 Hz) the agent

* reads the three front cameras (declared at the model's camera layout and field of view,
  `autovla.sim.render.CAMERA_SPECS`), the speedometer, the IMU and the GNSS;
* every 0.5 s pushes the current frames into a 4-frame buffer per camera (2 Hz, oldest first)
  and, once the buffer is full, asks the service for a plan (the route's next command as the
  instruction; speed and IMU acceleration as the ego state);
* between plans, drives the latest plan (stored in world coordinates, so it stays put while
  the car moves): a PID on speed for throttle and brake, pure pursuit for the steering;
* brakes fully when the service is unreachable, answers with an error, or the last plan is
  older than `stale_plan_s` (and while the frame buffer is still filling).

`carla` and `leaderboard` are imported only when present: without them the agent works on
plain inputs (tests use stand-in sensor data and a stand-in server) and returns a `Control`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autovla.geometry import to_global, to_local, wrap_angle
from autovla.integrations.client import CAMERAS, FRAMES, PlanClient, ServiceError, plan_request
from autovla.sim.render import CAMERA_HEIGHT, CAMERA_SPECS

try:  # the leaderboard is optional: it lives in CARLA's environment (docs/carla.md)
    from leaderboard.autoagents.autonomous_agent import AutonomousAgent, Track

    HAVE_LEADERBOARD = True
except ImportError:  # pragma: no cover - depends on the environment
    AutonomousAgent = object  # type: ignore[assignment,misc]
    Track = None  # type: ignore[assignment]
    HAVE_LEADERBOARD = False

EARTH_RADIUS_M = 6378137.0  # CARLA's GNSS uses the WGS84 equatorial radius
ROAD_OPTIONS = {  # CARLA's agents.navigation.local_planner.RoadOption values
    -1: "VOID", 1: "LEFT", 2: "RIGHT", 3: "STRAIGHT", 4: "LANEFOLLOW",
    5: "CHANGELANELEFT", 6: "CHANGELANERIGHT",
}  # fmt: skip
DEFAULT_COMMANDS = {
    "LEFT": "turn left",
    "RIGHT": "turn right",
    "STRAIGHT": "go straight",
    "LANEFOLLOW": "go straight",
    "CHANGELANELEFT": "turn left",
    "CHANGELANERIGHT": "turn right",
    "VOID": "unknown",
}


def get_entry_point() -> str:
    """The leaderboard loads the class named here."""
    return "AutoVLACarlaAgent"


# --- config -------------------------------------------------------------------------------
@dataclass
class PIDGains:
    kp: float
    ki: float = 0.0
    kd: float = 0.0
    windup: float = 5.0  # |integral of the error| is clipped to this


@dataclass
class CarlaAgentConfig:
    """Everything the agent needs; JSON file keys are these field names (unknown keys are
    errors). Gains are for CARLA's default Lincoln MKZ at 20 Hz."""

    server_url: str = "http://127.0.0.1:8000"
    timeout_s: float = 30.0  # per plan; the simulator waits (synchronous mode)
    mode: str = "auto"  # auto, fast or slow thinking
    image_width: int = 640
    image_height: int = 360
    jpeg_quality: int = 90
    fov_deg: float | None = None  # None: the model's (CAMERA_SPECS)
    rear_axle_to_center_m: float = 1.4  # camera x offsets are from the rear axle
    plan_hz: float = 2.0  # frame buffer and service calls
    stale_plan_s: float = 1.0  # older plans are not driven: brake
    # longitudinal: a PID on speed error (m/s) -> throttle; brake when the plan slows down
    speed_pid: PIDGains = field(default_factory=lambda: PIDGains(kp=0.5, ki=0.05, kd=0.05))
    speed_horizon_s: float = 1.0  # target speed = mean plan speed over the next horizon
    max_throttle: float = 0.75
    stop_speed: float = 0.3  # target below this: full brake (hold)
    brake_ratio: float = 1.15  # speed above target x this: brake
    brake_gain: float = 0.3  # brake per m/s above the target
    # lateral: pure pursuit on the plan
    wheelbase_m: float = 2.9
    lookahead_min_m: float = 3.0
    lookahead_gain_s: float = 0.4  # lookahead = min + gain x speed
    max_steer_rad: float = 1.22  # steering angle at steer = 1 (70 degrees)
    max_abs_accel: float = 15.0  # IMU readings are clipped (spikes at spawn and on contact)
    route_reach_m: float = 7.5  # a route point this close is passed: the next one commands
    commands: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_COMMANDS))


def load_agent_config(path: str | os.PathLike | None) -> CarlaAgentConfig:
    """A JSON file of `CarlaAgentConfig` fields (empty path: the defaults)."""
    if not path:
        return CarlaAgentConfig()
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: cannot read the agent config: {e}") from None
    return _dataclass_from(CarlaAgentConfig, data, str(p))


def _dataclass_from(cls: type, data: Any, where: str) -> Any:
    """Build `cls` from a JSON object, checking keys and value types (annotations are text
    here: `from __future__ import annotations`)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kind = fields[name]
        if kind == "PIDGains":
            value = _dataclass_from(PIDGains, value, f"{where}: {name}")
        elif kind in ("float", "int") or (kind == "float | None" and value is not None):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or (kind == "int" and value != int(value)):
                raise ValueError(
                    f"{where}: {name} must be a finite {kind.split()[0]}, got {value!r}"
                )
            value = int(value) if kind == "int" else float(value)
        elif kind == "str" and not isinstance(value, str):
            raise ValueError(f"{where}: {name} must be text, got {value!r}")
        elif kind.startswith("dict") and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            raise ValueError(f"{where}: {name} must map names to text, got {value!r}")
        kwargs[name] = value
    try:
        cfg = cls(**kwargs)
    except TypeError as e:  # a required key (a PID's kp) is missing
        raise ValueError(f"{where}: {e}") from None
    if isinstance(cfg, CarlaAgentConfig):
        bad = {k: v for k, v in cfg.commands.items() if v not in DEFAULT_COMMANDS.values()}
        if bad:
            raise ValueError(f"{where}: commands: {bad} are not model instructions")
        if cfg.mode not in ("auto", "fast", "slow"):
            raise ValueError(f"{where}: mode must be auto, fast or slow, got {cfg.mode!r}")
    return cfg


# --- controllers --------------------------------------------------------------------------
class PID:
    """u = kp e + ki integral(e) + kd de/dt, with the integral clipped to +-windup."""

    def __init__(self, gains: PIDGains):
        self.gains = gains
        self.integral = 0.0
        self.previous: float | None = None

    def reset(self) -> None:
        self.integral, self.previous = 0.0, None

    def step(self, error: float, dt: float) -> float:
        g = self.gains
        self.integral = float(np.clip(self.integral + error * dt, -g.windup, g.windup))
        derivative = 0.0 if self.previous is None or dt <= 0 else (error - self.previous) / dt
        self.previous = error
        return g.kp * error + g.ki * self.integral + g.kd * derivative


def pure_pursuit(path_xy: np.ndarray, speed: float, cfg: CarlaAgentConfig) -> float:
    """Steering angle (rad, positive = left) towards the first path point (ego frame: x
    forward, y left) at least the lookahead distance away and ahead of the car."""
    lookahead = cfg.lookahead_min_m + cfg.lookahead_gain_s * max(speed, 0.0)
    ahead = path_xy[path_xy[:, 0] > 0.1]
    if len(ahead) == 0:
        return 0.0
    dist = np.hypot(ahead[:, 0], ahead[:, 1])
    far = np.nonzero(dist >= lookahead)[0]
    target = ahead[far[0]] if len(far) else ahead[-1]
    ld = float(np.hypot(*target))
    if ld < 0.5:  # a plan that stays where it is: keep the wheels straight
        return 0.0
    alpha = math.atan2(float(target[1]), float(target[0]))
    return math.atan(2.0 * cfg.wheelbase_m * math.sin(alpha) / ld)


def plan_speed(times: np.ndarray, arc: np.ndarray, t: float, horizon: float) -> float:
    """Mean speed of a plan (arc length `arc` at `times`, both starting at 0) over
    [t, t + horizon]."""
    s0, s1 = np.interp([t, t + horizon], times, arc)
    return float(s1 - s0) / horizon


@dataclass
class Control:
    """What the agent asks of the car (CARLA's convention: steer in [-1, 1], positive right)."""

    steer: float = 0.0
    throttle: float = 0.0
    brake: float = 1.0
    reason: str = ""  # why (for logs and tests): drive, warmup, no_plan, stale, unreachable


@dataclass
class _Plan:
    world: np.ndarray  # (11, 3): the pose at plan time, then the 10 planned poses
    time: float  # simulation time of the frames it was made from


# --- GNSS and route -----------------------------------------------------------------------
class LocalFrame:
    """Latitude/longitude -> metres (x east, y north) around an origin; equirectangular, which
    is accurate to centimetres over the few kilometres of a route."""

    def __init__(self, lat0: float, lon0: float):
        self.lat0, self.lon0 = lat0, lon0
        self._kx = math.radians(1.0) * EARTH_RADIUS_M * math.cos(math.radians(lat0))
        self._ky = math.radians(1.0) * EARTH_RADIUS_M

    def xy(self, lat: float, lon: float) -> np.ndarray:
        return np.array([(lon - self.lon0) * self._kx, (lat - self.lat0) * self._ky])


def compass_to_heading(compass: float) -> float:
    """CARLA's compass (rad, 0 = north, clockwise) -> heading (rad, 0 = east, counter-clockwise)."""
    return float(wrap_angle(math.pi / 2 - compass))


def road_option_name(option: Any) -> str:
    """A RoadOption enum member, its int value or its name -> its name."""
    if isinstance(option, str):
        return option.upper()
    name = getattr(option, "name", None)
    if isinstance(name, str):
        return name.upper()
    return ROAD_OPTIONS.get(int(getattr(option, "value", option)), "VOID")


class RouteCommands:
    """The route's next command: route points closer than `reach_m` count as passed."""

    def __init__(self, points: np.ndarray, options: list[str], reach_m: float):
        self.points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        self.options = options
        self.reach_m = reach_m
        self.index = 0

    def next_option(self, position: np.ndarray) -> str:
        while self.index < len(self.points) - 1 and (
            np.hypot(*(self.points[self.index] - position)) < self.reach_m
        ):
            self.index += 1
        return self.options[self.index] if len(self.options) else "VOID"


# --- the driver (simulator-independent) ------------------------------------------------------
class AutoVLADriver:
    """Buffers frames at 2 Hz, asks the service for plans, and tracks the latest one."""

    def __init__(self, config: CarlaAgentConfig, client: Any = None):
        self.cfg = config
        self.client = client or PlanClient(config.server_url, timeout=config.timeout_s)
        self.frames: dict[str, deque] = {c: deque(maxlen=FRAMES) for c in CAMERAS}
        self.speed_pid = PID(config.speed_pid)
        self.frame: LocalFrame | None = None
        self.route: RouteCommands | None = None
        self.plan: _Plan | None = None
        self.last_buffer_t: float | None = None
        self.last_t: float | None = None
        self.heading = 0.0
        self.calls = 0
        self.failures = 0
        self.last_error: str | None = None

    def set_route(self, gps_route: list[tuple[float, float, Any]]) -> None:
        """(lat, lon, road option) per route point; the first point is the map origin."""
        if not gps_route:
            return
        lat0, lon0, _ = gps_route[0]
        self.frame = LocalFrame(lat0, lon0)
        points = np.array([self.frame.xy(lat, lon) for lat, lon, _ in gps_route])
        options = [road_option_name(o) for _, _, o in gps_route]
        self.route = RouteCommands(points, options, self.cfg.route_reach_m)

    def instruction(self, position: np.ndarray) -> str:
        if self.route is None:
            return "unknown"
        return self.cfg.commands.get(self.route.next_option(position), "unknown")

    def step(
        self,
        t: float,
        images: dict[str, np.ndarray],
        speed: float,
        accel: tuple[float, float],
        lat: float,
        lon: float,
        compass: float,
    ) -> Control:
        """One tick. `images`: RGB (H, W, 3) uint8 per camera; `accel`: IMU (forward, left)
        in m/s^2; `compass` in CARLA's convention (NaN keeps the last heading)."""
        if self.frame is None:
            self.frame = LocalFrame(lat, lon)
        if math.isfinite(compass):
            self.heading = compass_to_heading(compass)
        pose = np.array([*self.frame.xy(lat, lon), self.heading])
        dt = 0.0 if self.last_t is None else max(t - self.last_t, 0.0)
        self.last_t = t
        period = 1.0 / self.cfg.plan_hz
        if self.last_buffer_t is None or t - self.last_buffer_t >= period - 1e-6:
            self.last_buffer_t = t
            for cam in CAMERAS:
                self.frames[cam].append(np.asarray(images[cam], dtype=np.uint8))
            if all(len(f) == FRAMES for f in self.frames.values()):
                self._replan(t, pose, speed, accel)
        if any(len(f) < FRAMES for f in self.frames.values()):
            return self._brake("warmup")
        if self.plan is None:
            return self._brake("unreachable" if self.last_error else "no_plan")
        if t - self.plan.time > self.cfg.stale_plan_s:
            return self._brake("stale")
        return self._track(t, pose, speed, dt)

    def _replan(self, t: float, pose: np.ndarray, speed: float, accel: tuple[float, float]) -> None:
        lim = self.cfg.max_abs_accel
        ax, ay = (float(np.clip(a, -lim, lim)) if math.isfinite(a) else 0.0 for a in accel)
        body = plan_request(
            {c: list(self.frames[c]) for c in CAMERAS},
            vx=max(float(speed), 0.0) if math.isfinite(speed) else 0.0,
            ax=ax, ay=ay, instruction=self.instruction(pose[:2]), mode=self.cfg.mode,
        )  # fmt: skip
        self.calls += 1
        try:
            reply = self.client.plan(body)
        except (ServiceError, OSError, ValueError) as e:
            # No plan to trust: drop the old one so the car brakes instead of driving blind.
            self.failures += 1
            self.last_error = str(e)
            self.plan = None
            return
        self.last_error = None
        local = np.vstack([np.zeros((1, 3)), np.asarray(reply.trajectory, dtype=np.float64)])
        self.plan = _Plan(to_global(local, pose), t)

    def _brake(self, reason: str) -> Control:
        self.speed_pid.reset()
        return Control(0.0, 0.0, 1.0, reason)

    def _track(self, t: float, pose: np.ndarray, speed: float, dt: float) -> Control:
        cfg = self.cfg
        assert self.plan is not None
        world = self.plan.world
        times = np.arange(len(world)) / cfg.plan_hz
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(world[:, :2], axis=0).T))])
        target = plan_speed(times, arc, t - self.plan.time, cfg.speed_horizon_s)
        local = to_local(world, pose)
        steer_angle = pure_pursuit(local[:, :2], speed, cfg)
        steer = -float(np.clip(steer_angle / cfg.max_steer_rad, -1.0, 1.0))  # CARLA: + = right
        if target < cfg.stop_speed:
            self.speed_pid.reset()
            return Control(steer, 0.0, 1.0, "drive")
        u = self.speed_pid.step(target - speed, dt if dt > 0 else 1.0 / 20)
        if speed > target * cfg.brake_ratio:
            brake = float(np.clip(cfg.brake_gain * (speed - target), 0.0, 1.0))
            return Control(steer, 0.0, brake, "drive")
        return Control(steer, float(np.clip(u, 0.0, cfg.max_throttle)), 0.0, "drive")


# --- the leaderboard agent ----------------------------------------------------------------
def bgra_to_rgb(image: np.ndarray) -> np.ndarray:
    """CARLA camera images are BGRA uint8 (H, W, 4)."""
    return np.ascontiguousarray(np.asarray(image)[:, :, 2::-1])


class AutoVLACarlaAgent(AutonomousAgent):
    """The leaderboard's agent: sensors at the model's camera layout; plans from the service."""

    def setup(self, path_to_conf_file: str | None = None, client: Any = None) -> None:
        if HAVE_LEADERBOARD:
            self.track = Track.SENSORS
        self.config = load_agent_config(path_to_conf_file)
        self.driver = AutoVLADriver(self.config, client)
        self._route_set = False

    def sensors(self) -> list[dict[str, Any]]:
        """Three RGB cameras (CARLA: x forward, y right, yaw clockwise), IMU, GNSS, speed."""
        cfg = self.config
        out: list[dict[str, Any]] = []
        for cam in CAMERAS:
            x, y, yaw, fov = CAMERA_SPECS[cam]
            out.append({
                "type": "sensor.camera.rgb", "id": cam,
                "x": x - cfg.rear_axle_to_center_m, "y": -y, "z": CAMERA_HEIGHT,
                "roll": 0.0, "pitch": 0.0, "yaw": -yaw,
                "width": cfg.image_width, "height": cfg.image_height,
                "fov": cfg.fov_deg if cfg.fov_deg is not None else fov,
            })  # fmt: skip
        zero = {"x": 0.0, "y": 0.0, "z": 0.0, "roll": 0.0, "pitch": 0.0, "yaw": 0.0}
        out.append({"type": "sensor.other.imu", "id": "imu", "sensor_tick": 0.05, **zero})
        out.append({"type": "sensor.other.gnss", "id": "gnss", "sensor_tick": 0.01, **zero})
        out.append({"type": "sensor.speedometer", "id": "speed", "reading_frequency": 20})
        return out

    def run_step(self, input_data: dict[str, Any], timestamp: float) -> Any:
        if not self._route_set:
            plan = getattr(self, "_global_plan", None) or []
            self.driver.set_route([(p["lat"], p["lon"], option) for p, option in plan])
            self._route_set = True
        images = {cam: bgra_to_rgb(input_data[cam][1]) for cam in CAMERAS}
        imu = np.asarray(input_data["imu"][1], dtype=np.float64)
        gnss = np.asarray(input_data["gnss"][1], dtype=np.float64)
        speed = float(input_data["speed"][1]["speed"])
        # IMU: accelerometer x forward, y right (CARLA) -> forward, left; compass last.
        control = self.driver.step(
            float(timestamp), images, speed, (imu[0], -imu[1]), gnss[0], gnss[1], imu[-1]
        )
        return to_vehicle_control(control)

    def destroy(self) -> None:
        self.driver.client.close()


def to_vehicle_control(control: Control) -> Any:
    """carla.VehicleControl when CARLA is importable, else the Control itself."""
    try:
        import carla
    except ImportError:
        return control
    return carla.VehicleControl(
        steer=float(control.steer), throttle=float(control.throttle), brake=float(control.brake)
    )
