"""Dataset export: scenes rolled out by the expert, rendered, written as DrivingSamples.

Layout of the output directory:
    dataset.json                  generator settings and the camera models
    manifest-00000.jsonl ...      one shard per `shard_size` scenes (written last, atomically)
    images/<scene>/<cam>_<ff>.png frames at 2 Hz, shared by the samples of a scene
    metric_cache/<scene>/<tt>.npz per-sample metric cache (autovla.scoring.MetricCache)

Each scene yields `samples_per_scene` samples 0.5 s apart starting at t = 1.5 s. History is
the 4 ego poses at -1.5, -1.0, -0.5 and 0 s (the last is the current pose, (0, 0, 0)); the
future is the expert's 10 poses at 0.5 ... 5 s. A shard whose manifest exists is skipped,
so an interrupted run resumes; the same seed gives the same bytes with any worker count.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
from pathlib import Path

import numpy as np

from autovla.data.manifest import ManifestWriter
from autovla.data.meta_actions import meta_action
from autovla.data.schema import STANDARD_CAMERAS, DrivingSample, EgoState, round_poses
from autovla.geometry import to_local, wrap_angle
from autovla.io import read_json, write_json
from autovla.scoring.sim_cache import build_metric_cache
from autovla.sim.facts import Instant, SceneStatic, render_frame, scene_facts
from autovla.sim.render import make_cameras
from autovla.sim.rollout import Log, simulate
from autovla.sim.scenarios import SCENARIO_TYPES, Scenario, check_type, make_scenario
from autovla.sim.world import DT

FIRST_T = 1.5  # s: the first sample needs 1.5 s of history
FRAME_STEPS = 5  # 10 Hz steps per 0.5 s frame
SPLITS = (("train", 0.8), ("val", 0.9), ("test", 1.0))


def scene_seed(seed: int, index: int) -> int:
    return int.from_bytes(
        hashlib.sha256(f"autovla-sim:{seed}:{index}".encode()).digest()[:4], "big"
    )


def split_of(seed: int) -> str:
    """Split by scenario seed: a scenario seed always lands in the same split."""
    u = int.from_bytes(hashlib.sha256(f"split:{seed}".encode()).digest()[:4], "big") / 2**32
    return next(name for name, edge in SPLITS if u < edge)


def instant(log: Log, k: int) -> Instant:
    lights = ["green", "yellow", "red"]
    return Instant(
        t=float(log.t[k]),
        ego=log.ego[k],
        ego_s=float(log.ego_s[k]),
        ego_d=float(log.ego_d[k]),
        agents=log.agents[k],
        v=log.v[k],
        a=log.a[k],
        cutting_in=log.cutting_in[k],
        lights=[lights[c] for c in log.lights[k]],
    )


def ego_motion(ego: np.ndarray, k: int) -> EgoState:
    """Velocity and acceleration in the ego frame from the logged rear-axle states."""
    v, a = float(ego[k, 3]), float(ego[k, 4])
    yaw_rate = float(wrap_angle(ego[k + 1, 2] - ego[k - 1, 2])) / (2 * DT)
    return EgoState(vx=round(v, 4), vy=0.0, ax=round(a, 4), ay=round(v * yaw_rate, 4))


def build_sample(
    scn: Scenario,
    static: SceneStatic,
    log: Log,
    k: int,
    sample_id: str,
    split: str,
    cameras: dict[str, list[str]],
    scoring_rel: str | None,
    with_future: bool = True,
) -> tuple[DrivingSample, np.ndarray | None]:
    inst = instant(log, k)
    pose = log.ego[k, :3]
    hist = to_local(log.ego[[k - 15, k - 10, k - 5, k], :3], pose)
    future = None
    meta = None
    if with_future:
        future = to_local(log.ego[k + 5 : k + 51 : 5, :3], pose)
        meta = meta_action(future, float(log.ego[k, 3]))
    sample = DrivingSample(
        id=sample_id,
        source="synthetic",
        split=split,
        cameras=cameras,
        ego=ego_motion(log.ego, k),
        instruction=scn.instruction,
        history=round_poses(hist),
        future=round_poses(future) if future is not None else None,
        meta_action=meta,
        scenario_type=scn.name,
        complex=scn.complex,
        scene=scene_facts(scn, inst),
        scoring=scoring_rel,
        meta={
            "scene": sample_id.rsplit("-t", 1)[0],
            "seed": scn.seed,
            "t": round(inst.t, 2),
            "world_pose": [round(float(x), 4) for x in pose],
        },
    )
    return sample, future


def generate_scene(
    root: Path,
    index: int,
    type_name: str,
    seed: int,
    image_size: tuple[int, int],
    samples_per_scene: int,
    camera_names: tuple[str, ...] = STANDARD_CAMERAS,
) -> list[DrivingSample]:
    """Roll out, render and write one scene; returns its samples (manifest not written)."""
    scn = make_scenario(type_name, seed)
    static = SceneStatic(scn)
    last_t = FIRST_T + 0.5 * (samples_per_scene - 1)
    log = simulate(scn, last_t + 5.0 + DT)
    cams = make_cameras(camera_names, image_size)
    scene_id = f"{index:06d}-{type_name}"
    split = split_of(seed)
    n_frames = round(last_t / 0.5) + 1
    for f in range(n_frames):
        for name, img in render_frame(scn, static, instant(log, f * FRAME_STEPS), cams).items():
            path = root / "images" / scene_id / f"{name}_{f:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path, format="PNG", compress_level=1)
    samples = []
    for i in range(samples_per_scene):
        f = 3 + i  # frame index of the current time
        k = f * FRAME_STEPS
        cameras = {
            c: [f"images/{scene_id}/{c}_{g:02d}.png" for g in range(f - 3, f + 1)]
            for c in camera_names
        }
        rel = f"metric_cache/{scene_id}/{f:02d}.npz"
        sample_id = f"{scene_id}-t{f:02d}"
        sample, _ = build_sample(scn, static, log, k, sample_id, split, cameras, rel)
        build_metric_cache(scn, log, k, sample_id).save(root / rel)
        samples.append(sample)
    return samples


def _shard_job(args: tuple) -> int:
    root, shard, items, image_size, per_scene, cams = args
    samples = []
    for index, type_name, seed in items:
        samples += generate_scene(root, index, type_name, seed, image_size, per_scene, cams)
    with ManifestWriter(root / f"manifest-{shard:05d}.jsonl") as w:
        for s in samples:
            w.write(s)
    return len(items)


def generate_dataset(
    out: Path,
    scenes: int,
    seed: int,
    workers: int = 1,
    types: list[str] | None = None,
    image_size: tuple[int, int] = (224, 112),
    progress: bool = True,
    samples_per_scene: int = 8,
    shard_size: int = 10,
    cameras: tuple[str, ...] = STANDARD_CAMERAS,
) -> Path:
    """Write a dataset of `scenes` scenes (types cycled in order); resumable. Returns `out`."""
    types = list(types) if types else list(SCENARIO_TYPES)
    for t in types:
        check_type(t)
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 1 <= samples_per_scene <= 16:
        raise ValueError(f"samples_per_scene must be in 1..16, got {samples_per_scene}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    cams = make_cameras(tuple(cameras), tuple(image_size))  # validates size and names
    out = Path(out)
    info = {
        "source": "synthetic",
        "generator": "autovla.sim",
        "seed": seed,
        "scenes": scenes,
        "types": types,
        "samples_per_scene": samples_per_scene,
        "shard_size": shard_size,
        "image_size": list(image_size),
        "frames_hz": 2.0,
        "history": "4 ego poses at -1.5, -1.0, -0.5, 0 s (the last is the current pose)",
        "future": "expert rear-axle poses at 0.5 ... 5.0 s, ego frame",
        "ego_frame": "rear axle, x forward, y left, heading counter-clockwise (rad)",
        "scoring": "metric cache per sample; autovla.scoring.load_cache / score_plans",
        "cameras": {c.name: c.to_dict() for c in cams},
    }
    info_path = out / "dataset.json"
    if info_path.exists():
        old = read_json(info_path)
        if old != info:
            diff = sorted(k for k in info if old.get(k) != info[k])
            raise ValueError(
                f"{info_path} was written with other settings ({', '.join(diff)}); use a new --out"
            )
    else:
        write_json(info_path, info)
    jobs = []
    for shard, start in enumerate(range(0, scenes, shard_size)):
        if (out / f"manifest-{shard:05d}.jsonl").exists():
            continue
        items = [
            (i, types[i % len(types)], scene_seed(seed, i))
            for i in range(start, min(start + shard_size, scenes))
        ]
        jobs.append((out, shard, items, tuple(image_size), samples_per_scene, tuple(cameras)))
    todo = sum(len(j[2]) for j in jobs)
    from tqdm import tqdm

    bar = tqdm(
        total=scenes, initial=scenes - todo, unit="scene", disable=not progress, desc="sim generate"
    )
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            bar.update(_shard_job(job))
    else:
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for n in pool.imap_unordered(_shard_job, jobs):
                bar.update(n)
    bar.close()
    return out
