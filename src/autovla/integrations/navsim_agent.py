"""An agent the NAVSIM devkit (v1.1) can load, so plans are scored by the official PDM scorer.

The devkit instantiates agents from a Hydra config (`_target_:
autovla.integrations.navsim_agent.AutoVLAAgent`, see docs/navsim.md). The agent turns the
devkit's `AgentInput` (4 history frames of ego status and the CAM_F0/L0/R0 images) into a
`DrivingSample` without an answer, writes the images to a scratch folder, calls an autovla
plan function (`plan_fn(samples, roots) -> [PlanOutput]`, e.g. a trained model or a baseline),
and returns the first 8 poses (4 s at 0.5 s) as a NAVSIM `Trajectory`.

Without the devkit installed the class still works (tests use stand-in inputs) and returns the
poses as an (8, 3) array instead of a `Trajectory`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from autovla.data.schema import DrivingSample, EgoState, round_poses
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


def sample_from_agent_input(agent_input: Any, root: Path, token: str = "navsim") -> DrivingSample:
    """The planner's view of a NAVSIM AgentInput; images are written under `root`."""
    from PIL import Image

    token = safe_name(token)  # a file-name component: never a path out of `root`
    statuses = list(agent_input.ego_statuses)[-HISTORY_FRAMES:]
    poses = np.stack([np.asarray(s.ego_pose, dtype=np.float64) for s in statuses])
    history = to_local(poses, poses[-1])  # the last is now: (0, 0, 0)
    cur = statuses[-1]
    vel = np.asarray(cur.ego_velocity, dtype=np.float64)
    acc = np.asarray(cur.ego_acceleration, dtype=np.float64)
    cmd = np.asarray(cur.driving_command, dtype=np.float64).ravel()
    instruction = COMMANDS[int(np.argmax(cmd))] if cmd.size == 4 and cmd.max() > 0 else "unknown"
    cameras: dict[str, list[str]] = {name: [] for name in CAMERAS}
    frames = list(agent_input.cameras)[-HISTORY_FRAMES:]
    for t, cams in enumerate(frames):
        for name, attr in CAMERAS.items():
            image = getattr(getattr(cams, attr, None), "image", None)
            if image is None:
                raise ValueError(f"AgentInput frame {t} has no {attr} image: enable it in the "
                                 "sensor config")  # fmt: skip
            rel = f"{token}/{name}_{t}.jpg"
            dest = inside(root, rel, "image path")
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(dest, quality=95)
            cameras[name].append(rel)
    return DrivingSample(
        id=f"navsim-{token}",
        source="navsim",
        split="test",
        cameras=cameras,
        ego=EgoState(vx=vel[0], vy=vel[1], ax=acc[0], ay=acc[1]),
        instruction=instruction,
        history=round_poses(history),
    )


class AutoVLAAgent(AbstractAgent):
    """NAVSIM agent backed by an autovla plan function (a model directory by default)."""

    requires_scene = False

    def __init__(
        self,
        model_dir: str | None = None,
        mode: str = "auto",
        plan_fn: Any = None,
        trajectory_sampling: Any = None,
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
        if model_dir is None and plan_fn is None:
            raise ValueError("AutoVLAAgent needs model_dir (a trained model) or plan_fn")
        self.model_dir = model_dir
        self.mode = mode
        self.plan_fn = plan_fn
        self._scratch = tempfile.TemporaryDirectory(prefix="autovla-navsim-")
        self._calls = 0

    def name(self) -> str:
        return "autovla"

    def initialize(self) -> None:
        """Load the model once per worker (the devkit calls this before planning)."""
        if self.plan_fn is None:
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
        if self.plan_fn is None:
            self.initialize()
        root = Path(self._scratch.name)
        self._calls += 1
        sample = sample_from_agent_input(agent_input, root, token=f"call{self._calls:08d}")
        (out,) = self.plan_fn([sample], [root])
        poses = np.asarray(out.trajectory, dtype=np.float64)[:PLAN_POSES]
        if HAVE_NAVSIM:
            return Trajectory(poses.astype(np.float32), self._sampling)
        return poses
