"""Run a scenario with the expert driving and log every 10 Hz state (the dataset's source)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autovla.sim.scenarios import Scenario
from autovla.sim.world import DT

LIGHT_CODES = {"green": 0, "yellow": 1, "red": 2}


@dataclass
class Log:
    """States at t = k * DT: ego (T, 5) = x, y, yaw, v, a; agents (T, A, 3) centre poses."""

    t: np.ndarray
    ego: np.ndarray
    agents: np.ndarray
    v: np.ndarray  # (T, A)
    a: np.ndarray  # (T, A)
    cutting_in: np.ndarray  # (T, A) bool
    lights: np.ndarray  # (T, L) int codes
    ego_d: np.ndarray  # (T,) expert lateral offset on its route
    ego_s: np.ndarray  # (T,) expert arc length on its route

    def index(self, t: float) -> int:
        return round(t / DT)


def record(scn: Scenario) -> tuple:
    w = scn.world
    ego = w.ego
    poses = np.array([a.pose() for a in w.agents]).reshape(-1, 3)
    return (
        w.t,
        [ego.x, ego.y, ego.yaw, ego.v, ego.a],
        poses,
        [a.v for a in w.agents],
        [a.a for a in w.agents],
        [a.cutting_in for a in w.agents],
        [LIGHT_CODES[li.state(w.t)] for li in w.map.lights],
        scn.expert.d,
        scn.expert.s,
    )


def expert_tick(scn: Scenario) -> None:
    """One 10 Hz step with the expert driving: everyone decides on the same snapshot."""
    w = scn.world
    snap = w.snapshot()
    accels = w.agent_accels(snap)
    scn.expert.step(w, snap=snap)
    w.advance_agents(accels)
    w.ego = scn.expert.ego_state()
    w.t = round(w.t + DT, 6)


def log_from_rows(rows: list[tuple], n_agents: int) -> Log:
    """Stack per-tick `record` rows into a Log (arrays over time)."""
    cols = list(zip(*rows, strict=True))
    n = len(rows)
    return Log(
        t=np.array(cols[0]),
        ego=np.array(cols[1]),
        agents=np.array(cols[2]).reshape(n, n_agents, 3),
        v=np.array(cols[3]).reshape(n, n_agents),
        a=np.array(cols[4]).reshape(n, n_agents),
        cutting_in=np.array(cols[5], dtype=bool).reshape(n, n_agents),
        lights=np.array(cols[6], dtype=np.int8).reshape(n, -1),
        ego_d=np.array(cols[7]),
        ego_s=np.array(cols[8]),
    )


def simulate(scn: Scenario, duration: float) -> Log:
    steps = round(duration / DT)
    rows = [record(scn)]
    for _ in range(steps):
        expert_tick(scn)
        rows.append(record(scn))
    return log_from_rows(rows, len(scn.world.agents))


def expert_problems(name: str, seed: int, duration: float = 10.0) -> list[str]:
    """Roll out a scenario (no rendering) and list expert collisions and off-road steps."""
    from autovla.geometry import box_corners, polygons_overlap
    from autovla.sim.agents import EGO_LENGTH, EGO_REAR, EGO_WIDTH
    from autovla.sim.scenarios import make_scenario

    scn = make_scenario(name, seed)
    log = simulate(scn, duration)
    ego = box_corners(log.ego[:, :3], EGO_LENGTH, EGO_WIDTH, EGO_REAR)
    out = []
    agents = scn.world.agents
    if agents:
        sizes = np.array([[a.length, a.width] for a in agents])
        boxes = box_corners(log.agents, sizes[None, :, 0], sizes[None, :, 1])
        hit = polygons_overlap(ego[:, None], boxes)
        for j in np.nonzero(hit.any(0))[0]:
            k = int(np.argmax(hit[:, j]))
            out.append(f"{name} seed {seed}: collides with {agents[j].id} at t={log.t[k]:.1f}s")
    off = ~scn.world.map.on_road(ego.reshape(-1, 2)).reshape(len(ego), 4).all(1)
    if off.any():
        out.append(f"{name} seed {seed}: off road at t={log.t[int(np.argmax(off))]:.1f}s")
    return out
