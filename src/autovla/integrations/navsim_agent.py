"""An agent the NAVSIM devkit (v1.1) can load, so plans are scored by the official PDM scorer.

The devkit instantiates agents from a Hydra config (`_target_:
autovla.integrations.navsim_agent.AutoVLAAgent`, see docs/navsim.md). The agent turns the
devkit's `AgentInput` (4 history frames of ego status and the CAM_F0/L0/R0 images) into a
`DrivingSample` without an answer, writes the images to a scratch folder, calls an autovla
plan function (`plan_fn(samples, roots) -> [PlanOutput]`, e.g. a trained model or a baseline),
and returns the first 8 poses (4 s at 0.5 s) as a NAVSIM `Trajectory`.

HTTP mode (`server_url=`): the agent sends the same frames (JPEG, quality 95, encoded in
memory) to an `autovla serve` process instead, so the devkit's environment needs only numpy
and Pillow besides the devkit: no torch, no transformers, no pydantic (this module imports
them only for the in-process mode).

Without the devkit installed the class still works (tests use stand-in inputs) and returns the
poses as an (8, 3) array instead of a `Trajectory`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from autovla.geometry import to_local
from autovla.paths import inside, safe_name

try:  # the devkit is optional: it is not on PyPI (see docs/navsim.md)
    from navsim.agents.abstract_agent import AbstractAgent
    from navsim.common.dataclasses import SensorConfig, Trajectory
    from nuplan.planning.simulation.trajectory.trajectory_sampling import TrajectorySampling

    HAVE_NAVSIM = True
except ImportError:  # pragma: no cover - depends on the environment
    AbstractAgent = object  # type: ignore[assignment,misc]
    HAVE_NAVSIM = False

HISTORY_FRAMES = 4
PLAN_POSES = 8  # NAVSIM scores 4 s at 0.5 s
CAMERAS = {"front": "cam_f0", "front_left": "cam_l0", "front_right": "cam_r0"}
COMMANDS = ("turn left", "go straight", "turn right", "unknown")  # one-hot order in NAVSIM
JPEG_QUALITY = 95


def _read_agent_input(agent_input: Any) -> dict[str, Any]:
    """History (ego frame), velocity, acceleration, instruction and RGB frames per camera."""
    statuses = list(agent_input.ego_statuses)[-HISTORY_FRAMES:]
    poses = np.stack([np.asarray(s.ego_pose, dtype=np.float64) for s in statuses])
    cur = statuses[-1]
    cmd = np.asarray(cur.driving_command, dtype=np.float64).ravel()
    frames: dict[str, list[np.ndarray]] = {name: [] for name in CAMERAS}
    for t, cams in enumerate(list(agent_input.cameras)[-HISTORY_FRAMES:]):
        for name, attr in CAMERAS.items():
            image = getattr(getattr(cams, attr, None), "image", None)
            if image is None:
                raise ValueError(f"AgentInput frame {t} has no {attr} image: enable it in the "
                                 "sensor config")  # fmt: skip
            frames[name].append(np.asarray(image, dtype=np.uint8))
    return {
        "history": to_local(poses, poses[-1]),  # the last is now: (0, 0, 0)
        "vel": np.asarray(cur.ego_velocity, dtype=np.float64),
        "acc": np.asarray(cur.ego_acceleration, dtype=np.float64),
        "instruction": (
            COMMANDS[int(np.argmax(cmd))] if cmd.size == 4 and cmd.max() > 0 else "unknown"
        ),
        "frames": frames,
    }


def sample_from_agent_input(agent_input: Any, root: Path, token: str = "navsim") -> Any:
    """The planner's view of a NAVSIM AgentInput (a DrivingSample); images are written under
    `root`."""
    from PIL import Image

    from autovla.data.schema import DrivingSample, EgoState, round_poses

    token = safe_name(token)  # a file-name component: never a path out of `root`
    state = _read_agent_input(agent_input)
    cameras: dict[str, list[str]] = {name: [] for name in CAMERAS}
    for name, frames in state["frames"].items():
        for t, image in enumerate(frames):
            rel = f"{token}/{name}_{t}.jpg"
            dest = inside(root, rel, "image path")
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(dest, quality=JPEG_QUALITY)
            cameras[name].append(rel)
    vel, acc = state["vel"], state["acc"]
    return DrivingSample(
        id=f"navsim-{token}",
        source="navsim",
        split="test",
        cameras=cameras,
        ego=EgoState(vx=vel[0], vy=vel[1], ax=acc[0], ay=acc[1]),
        instruction=state["instruction"],
        history=round_poses(state["history"]),
    )


def request_from_agent_input(agent_input: Any, token: str = "navsim", **options: Any) -> dict:
    """The `autovla serve` request for a NAVSIM AgentInput: the same frames as the same JPEG
    bytes the in-process mode writes (quality 95), encoded in memory."""
    from autovla.integrations.client import image_file, plan_request

    state = _read_agent_input(agent_input)
    vel, acc = state["vel"], state["acc"]
    cameras = {
        name: [image_file(f, quality=JPEG_QUALITY) for f in frames]
        for name, frames in state["frames"].items()
    }
    return plan_request(
        cameras, vx=vel[0], vy=vel[1], ax=acc[0], ay=acc[1], instruction=state["instruction"],
        history=np.round(state["history"], 4), request_id=f"navsim-{token}", **options,
    )  # fmt: skip


class AutoVLAAgent(AbstractAgent):
    """NAVSIM agent backed by an autovla plan function (a model directory by default) or, with
    `server_url`, by an `autovla serve` process (`api_key` or $AUTOVLA_API_KEY if it needs
    one; `timeout` seconds per plan)."""

    requires_scene = False

    def __init__(
        self,
        model_dir: str | None = None,
        mode: str = "auto",
        plan_fn: Any = None,
        trajectory_sampling: Any = None,
        server_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
    ):
        if HAVE_NAVSIM:
            sampling = trajectory_sampling or TrajectorySampling(
                time_horizon=4, interval_length=0.5
            )
            try:  # devkit v2 takes the sampling; v1.x only requires_scene
                super().__init__(trajectory_sampling=sampling, requires_scene=False)
            except TypeError:
                super().__init__(requires_scene=False)
            self._sampling = sampling
        else:
            self._sampling = None
        given = [n for n, v in (("model_dir", model_dir), ("plan_fn", plan_fn),
                                ("server_url", server_url)) if v is not None]  # fmt: skip
        if len(given) != 1:
            raise ValueError(
                "AutoVLAAgent needs exactly one of model_dir (a trained model), plan_fn or "
                f"server_url (an autovla serve process); got {given or 'none'}"
            )
        self.model_dir = model_dir
        self.mode = mode
        self.plan_fn = plan_fn
        self.client = None
        if server_url is not None:
            from autovla.integrations.client import PlanClient

            self.client = PlanClient(server_url, api_key=api_key, timeout=timeout)
        self._scratch = None
        self._calls = 0

    def name(self) -> str:
        return "autovla"

    def initialize(self) -> None:
        """Load the model once per worker (the devkit calls this before planning); in HTTP
        mode, check that the service answers (fails early with the URL if not)."""
        if self.client is not None:
            self.client.health()
        elif self.plan_fn is None:
            from autovla.eval.planner_adapter import planner_plan_fn

            self.plan_fn = planner_plan_fn(self.model_dir, mode=self.mode)

    def get_sensor_config(self) -> Any:
        frames = list(range(HISTORY_FRAMES))
        if not HAVE_NAVSIM:
            return {attr: frames for attr in CAMERAS.values()}
        off = dict.fromkeys(["cam_l1", "cam_l2", "cam_r1", "cam_r2", "cam_b0", "lidar_pc"], False)
        return SensorConfig(cam_f0=frames, cam_l0=frames, cam_r0=frames, **off)

    def compute_trajectory(self, agent_input: Any) -> Any:
        """Plan 5 s with autovla and hand NAVSIM the first 4 s (8 poses)."""
        self._calls += 1
        token = f"call{self._calls:08d}"
        if self.client is not None:
            body = request_from_agent_input(agent_input, token=token, mode=self.mode)
            trajectory = self.client.plan(body).trajectory
        else:
            if self.plan_fn is None:
                self.initialize()
            if self._scratch is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="autovla-navsim-")
            root = Path(self._scratch.name)
            sample = sample_from_agent_input(agent_input, root, token=token)
            (out,) = self.plan_fn([sample], [root])
            trajectory = out.trajectory
        poses = np.asarray(trajectory, dtype=np.float64)[:PLAN_POSES]
        if HAVE_NAVSIM:
            return Trajectory(poses.astype(np.float32), self._sampling)
        return poses
