"""The NAVSIM agent with stand-in AgentInputs (the devkit itself is not installed here)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from autovla.eval.baselines import PlanOutput
from autovla.integrations.navsim_agent import AutoVLAAgent, sample_from_agent_input


def agent_input(in_global: bool = True) -> SimpleNamespace:
    origin = np.array([100.0, 50.0, 0.8])
    local = np.array([[-7.5, 0.0, 0.0], [-5.0, 0.0, 0.0], [-2.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    from autovla.geometry import to_global

    poses = to_global(local, origin) if in_global else local
    statuses = [
        SimpleNamespace(ego_pose=p, ego_velocity=np.array([5.0, 0.1]),
                        ego_acceleration=np.array([0.2, 0.0]),
                        driving_command=np.array([0, 0, 1, 0]))
        for p in poses
    ]  # fmt: skip
    img = np.full((8, 16, 3), 120, np.uint8)
    cams = [SimpleNamespace(cam_f0=SimpleNamespace(image=img), cam_l0=SimpleNamespace(image=img),
                            cam_r0=SimpleNamespace(image=img)) for _ in range(4)]  # fmt: skip
    return SimpleNamespace(ego_statuses=statuses, cameras=cams)


def test_sample_from_agent_input(tmp_path: Path) -> None:
    for in_global in (True, False):
        s = sample_from_agent_input(agent_input(in_global), tmp_path, token="t")
        np.testing.assert_allclose(s.history_array()[:, 0], [-7.5, -5.0, -2.5, 0.0], atol=1e-4)
        np.testing.assert_allclose(s.history_array()[:, 1:], 0.0, atol=1e-4)
        assert s.instruction == "turn right" and s.ego.vx == 5.0 and s.future is None
        assert len(s.cameras["front_left"]) == 4 and (tmp_path / s.cameras["front"][3]).is_file()


def test_agent_plans_8_poses() -> None:
    seen = []

    def plan_fn(samples, roots):
        seen.append(samples[0])
        return [PlanOutput(np.column_stack([np.arange(1, 11) * 2.5, np.zeros(10), np.zeros(10)]))]

    agent = AutoVLAAgent(plan_fn=plan_fn)
    agent.initialize()
    assert agent.name() == "autovla"
    out = agent.compute_trajectory(agent_input())
    poses = np.asarray(getattr(out, "poses", out))  # a navsim Trajectory when the devkit is here
    assert poses.shape == (8, 3) and poses[-1, 0] == pytest.approx(20.0)
    assert seen[0].future is None  # the planner never sees an answer


def test_needs_a_planner() -> None:
    with pytest.raises(ValueError, match="model_dir"):
        AutoVLAAgent()
