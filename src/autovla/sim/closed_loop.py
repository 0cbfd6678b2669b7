"""Closed-loop episodes: a planner replans every 0.5 s, the ego tracks its plan with the
scorer's LQR tracker and kinematic bicycle at 10 Hz (autovla.scoring.tracker), and the
other agents react to the ego.

Metrics follow the CARLA leaderboard: route completion (progress along the expert's route,
relative to what the expert itself covers in the episode time) times the infraction penalty
(vehicle collision 0.6, pedestrian 0.5, static object 0.65, red light 0.7, failing to yield
to a pedestrian on a crosswalk 0.8 (as a stop-sign infraction), off-road x (1 - fraction of
distance driven off road)). Success: completion >= 0.99 and no infraction.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autovla.data.schema import STANDARD_CAMERAS, DrivingSample
from autovla.geometry import box_corners, points_in_polygon, polygons_overlap, to_global, to_local
from autovla.scoring.interpolate import reference_states
from autovla.scoring.tracker import AX, HEADING, STEER, VX, X, Y, initial_state
from autovla.scoring.tracker import simulate as track_reference
from autovla.sim.agents import EGO_LENGTH, EGO_REAR, EGO_WIDTH, EgoState
from autovla.sim.export import FIRST_T, build_sample, instant
from autovla.sim.facts import SceneStatic, render_frame
from autovla.sim.render import make_cameras
from autovla.sim.rollout import Log, expert_tick, log_from_rows, record, simulate
from autovla.sim.scenarios import Scenario, make_scenario
from autovla.sim.world import DT

PENALTIES = {
    "collision_vehicle": 0.6,
    "collision_pedestrian": 0.5,
    "collision_static": 0.65,
    "red_light": 0.7,
    "pedestrian_yield": 0.8,
}
EPISODE_SECONDS = 12.0  # driving time after the first observation
GRACE_SECONDS = 4.0  # extra time to finish the route (a timeout ends the episode)


@dataclass
class EpisodeResult:
    scenario_type: str
    seed: int
    route_completion: float
    infractions: dict[str, int]
    off_road_fraction: float
    infraction_penalty: float
    driving_score: float
    success: bool
    steps: int
    meta: dict = field(default_factory=dict)


class ClosedLoopEpisode:
    """One scenario driven by an external planner; see the module docstring."""

    def __init__(
        self,
        scenario_type: str,
        seed: int,
        work_dir: Path | None,
        image_size: tuple[int, int] = (224, 112),
        cameras: tuple[str, ...] = STANDARD_CAMERAS,
        duration: float = EPISODE_SECONDS,
        start: float = FIRST_T,
        render: bool = True,
    ):
        if render and work_dir is None:
            raise ValueError("a rendering episode needs a work_dir for its camera frames")
        self.render = render
        self.work_dir = Path(work_dir) if work_dir is not None else None
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        self.cams = make_cameras(tuple(cameras), tuple(image_size)) if render else []
        k0 = round(start / DT)
        # the expert's own rollout sets the route length to complete
        ref = make_scenario(scenario_type, seed)
        ref_log = simulate(ref, k0 * DT + duration)
        self.target = float(ref_log.ego_s[-1] - ref_log.ego_s[k0])
        self.scn: Scenario = make_scenario(scenario_type, seed)
        self.static = SceneStatic(self.scn) if render else None
        self.t_end = k0 * DT + duration + GRACE_SECONDS
        self.rows: list[tuple] = []
        self.frames: list[int] = []
        self.steer = 0.0
        self.infractions = dict.fromkeys(PENALTIES, 0)
        self.hit_ids: set[str] = set()
        self.dist_total = 0.0
        self.dist_off = 0.0
        self.steps = 0
        for _ in range(k0):
            self._record()
            expert_tick(self.scn)
        self._record()
        self.s0 = self._progress()

    # --- bookkeeping ---------------------------------------------------------------------
    def _record(self) -> None:
        w = self.scn.world
        s, d = self.scn.expert.route.project(np.array([w.ego.x, w.ego.y]))
        self.scn.expert.s, self.scn.expert.d = float(s), float(d)
        self.rows.append(record(self.scn))
        k = len(self.rows) - 1
        if self.render and k % 5 == 0:
            f = k // 5
            for name, img in render_frame(
                self.scn, self.static, instant(self._log(k, k + 1), 0), self.cams
            ).items():
                img.save(self.work_dir / f"{name}_{f:03d}.png", format="PNG", compress_level=1)
            self.frames.append(f)

    def _log(self, k0: int, k1: int) -> Log:
        return log_from_rows(self.rows[k0:k1], len(self.scn.world.agents))

    def _progress(self) -> float:
        ego = self.scn.world.ego
        return float(self.scn.expert.route.project(np.array([ego.x, ego.y]))[0])

    # --- API -----------------------------------------------------------------------------
    @property
    def t(self) -> float:
        return self.scn.world.t

    @property
    def done(self) -> bool:
        # always the full episode time; the grace period only waits for a late route finish
        if self.t < self.t_end - GRACE_SECONDS - 1e-6:
            return False
        return self.t >= self.t_end - 1e-6 or self._progress() - self.s0 >= self.target

    def observe(self) -> tuple[DrivingSample, Path]:
        """The planner's input now: a sample without future, images relative to the root."""
        if not self.render:
            raise RuntimeError("observe() needs an episode built with render=True")
        k = len(self.rows) - 1
        log = self._log(0, k + 1)
        log.ego = np.concatenate([log.ego, log.ego[-1:]], 0)  # ego_motion looks one step ahead
        f = k // 5
        cameras = {
            c.name: [f"{c.name}_{g:03d}.png" for g in range(f - 3, f + 1)] for c in self.cams
        }
        sample, _ = build_sample(
            self.scn,
            self.static,
            log,
            k,
            f"closed-{self.scn.name}-{self.scn.seed}-{f:03d}",
            "closed_loop",
            cameras,
            None,
            with_future=False,
        )
        return sample, self.work_dir

    def _copy_scenario(self) -> Scenario:
        """A deep copy of the scenario that shares the immutable map and paths."""
        w = self.scn.world
        memo = {id(a.path): a.path for a in w.agents}
        memo[id(self.scn.expert.route)] = self.scn.expert.route
        memo[id(w.map)] = w.map
        return copy.deepcopy(self.scn, memo)

    def fork(self) -> ClosedLoopEpisode:
        """An independent copy from the current state (to try several plans from one state);
        rendering is off in the copy."""
        new = copy.copy(self)
        new.scn = self._copy_scenario()
        new.render = False
        new.rows, new.frames = list(self.rows), list(self.frames)
        new.infractions, new.hit_ids = dict(self.infractions), set(self.hit_ids)
        return new

    def expert_plan(self) -> np.ndarray:
        """The expert's 10-pose plan from the current state (ego frame), others reacting."""
        w = self.scn.world
        scn = self._copy_scenario()
        scn.expert.sync(w.ego)
        pose0 = w.ego.pose()
        out = []
        for k in range(50):
            expert_tick(scn)
            if k == 0:  # keep the expert's lane decision, so replanning does not undo it
                self.scn.expert.d_target = scn.expert.d_target
            if k % 5 == 4:
                out.append(scn.world.ego.pose())
        return to_local(np.array(out), pose0)

    def step(self, plan: np.ndarray, seconds: float = 0.5) -> None:
        """Advance `seconds` (0.5 s between replans; up to the plan's 5 s) with the ego
        tracking `plan` (10, 3) given in the current ego frame."""
        plan = np.asarray(plan, dtype=np.float64)
        if plan.shape != (10, 3) or not np.isfinite(plan).all():
            raise ValueError(f"plan must be a finite array of shape (10, 3), got {plan.shape}")
        n = round(seconds / DT)
        if not 1 <= n <= 50:
            raise ValueError(f"seconds must be within the plan's 0.1-5 s, got {seconds}")
        if self.done:
            raise RuntimeError("episode is done")
        w = self.scn.world
        ego = w.ego
        start = initial_state(np.array([0.0, 0.0, 0.0, ego.v, 0.0, ego.a, 0.0]), 1, self.steer)
        st = track_reference(reference_states(plan[None], len(plan)), start, steps=n)[0]
        pose0 = ego.pose()
        glob = to_global(st[:, [X, Y, HEADING]], pose0)
        for i in range(1, n + 1):
            snap = w.snapshot()
            accels = w.agent_accels(snap)
            prev = w.ego
            w.advance_agents(accels)
            w.ego = EgoState(
                float(glob[i, 0]),
                float(glob[i, 1]),
                float(glob[i, 2]),
                max(float(st[i, VX]), 0.0),  # the world's vehicles do not reverse
                float(st[i, AX]),
            )
            self.steer = float(st[i, STEER])
            w.t = round(w.t + DT, 6)
            self._check(prev, w.ego)
            self._record()
        self.steps += 1

    def _check(self, prev: EgoState, ego: EgoState) -> None:
        w = self.scn.world
        corners = box_corners(ego.pose(), EGO_LENGTH, EGO_WIDTH, EGO_REAR)
        step_len = float(np.hypot(ego.x - prev.x, ego.y - prev.y))
        self.dist_total += step_len
        if not w.map.on_road(corners).all():
            self.dist_off += step_len
        if ego.v > 0.1:
            for a in w.agents:
                if a.id in self.hit_ids:
                    continue
                if polygons_overlap(corners, box_corners(a.pose(), a.length, a.width)):
                    self.hit_ids.add(a.id)
                    kind = (
                        "collision_pedestrian"
                        if a.kind == "pedestrian"
                        else (
                            "collision_static"
                            if a.static and a.kind != "vehicle"
                            else "collision_vehicle"
                        )
                    )
                    self.infractions[kind] += 1
        # red light: the front-bumper centre crosses a stop line on red
        f0 = (box_corners(prev.pose(), EGO_LENGTH, EGO_WIDTH, EGO_REAR)[[0, 3]]).mean(0)
        f1 = corners[[0, 3]].mean(0)
        for sl in w.map.stop_lines:
            direction = np.array([np.cos(sl.heading), np.sin(sl.heading)])
            seg = sl.p1 - sl.p0
            along = ((f1 - sl.p0) @ seg) / (seg @ seg)
            crossed = (f0 - sl.p0) @ direction < 0 <= (f1 - sl.p0) @ direction
            red = w.map.lights[sl.light].state(w.t) == "red"
            if crossed and -0.2 < along < 1.2 and red and np.cos(ego.yaw - sl.heading) > 0.5:
                self.infractions["red_light"] += 1
        if ego.v > 0.5:
            peds = np.array([a.pose()[:2] for a in w.agents if a.kind == "pedestrian"]).reshape(
                -1, 2
            )
            centre = ego.center()[:2]
            for cw in w.map.crosswalks:
                on = points_in_polygon(peds, cw) & (np.hypot(*(peds - centre).T) < 8.0)
                if on.any() and polygons_overlap(corners, cw) and "yield" not in self.hit_ids:
                    self.infractions["pedestrian_yield"] += 1
                    self.hit_ids.add("yield")

    def result(self) -> EpisodeResult:
        completion = (
            1.0
            if self.target < 1.0
            else min(1.0, max(0.0, (self._progress() - self.s0) / self.target))
        )
        off = self.dist_off / self.dist_total if self.dist_total > 0 else 0.0
        penalty = float(np.prod([PENALTIES[k] ** n for k, n in self.infractions.items()])) * (
            1.0 - off
        )
        clean = not any(self.infractions.values()) and off == 0.0
        return EpisodeResult(
            scenario_type=self.scn.name,
            seed=self.scn.seed,
            route_completion=round(completion, 4),
            infractions=dict(self.infractions),
            off_road_fraction=round(off, 4),
            infraction_penalty=round(penalty, 4),
            driving_score=round(completion * penalty, 4),
            success=bool(completion >= 0.99 and clean),
            steps=self.steps,
            meta={"target_progress_m": round(self.target, 2)},
        )


def plan_scores(
    scenario_type: str, seed: int, t: float, plans: np.ndarray, horizon: float = 5.0
) -> np.ndarray:
    """Closed-loop driving score of each plan (N, 10, 3) followed for `horizon` seconds from
    the world state at time `t` of scenario (type, seed), the other agents reacting: route
    completion against the expert's progress in the same time times the infraction penalty
    (the episode metrics above, without replanning and without rendering)."""
    plans = np.asarray(plans, dtype=np.float64)
    if plans.ndim != 3 or plans.shape[1:] != (10, 3):
        raise ValueError(f"plans must have shape (N, 10, 3), got {plans.shape}")
    base = ClosedLoopEpisode(scenario_type, seed, None, duration=horizon, start=t, render=False)
    out = np.empty(len(plans))
    for i, plan in enumerate(plans):
        ep = base.fork()
        ep.step(plan, horizon)
        out[i] = ep.result().driving_score
    return out


def run_episode(
    plan_fn: Callable[[DrivingSample, Path], np.ndarray],
    scenario_type: str,
    seed: int,
    work_dir: Path,
    image_size: tuple[int, int] = (224, 112),
    duration: float = EPISODE_SECONDS,
) -> EpisodeResult:
    """Drive one episode with `plan_fn(sample, root) -> (10, 3)` replanning every 0.5 s."""
    ep = ClosedLoopEpisode(scenario_type, seed, work_dir, image_size, duration=duration)
    while not ep.done:
        sample, root = ep.observe()
        ep.step(plan_fn(sample, root))
    return ep.result()


def expert_episode(
    scenario_type: str,
    seed: int,
    work_dir: Path,
    image_size=(224, 112),
    duration: float = EPISODE_SECONDS,
) -> EpisodeResult:
    """The expert driving in closed loop through the same interface (a sanity baseline)."""
    ep = ClosedLoopEpisode(scenario_type, seed, work_dir, image_size, duration=duration)
    while not ep.done:
        ep.step(ep.expert_plan())
    return ep.result()
