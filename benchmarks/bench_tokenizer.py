"""Action tokenizer benchmarks: encode+decode throughput (batched vs per-trajectory loop),
K-disk fitting time and peak memory, and reconstruction ADE/FDE on held-out trajectories.

    .venv/bin/python benchmarks/bench_tokenizer.py [--segments 1000000] [--scenes 600]

Embedded-world data come from `autovla.sim` (expert rollouts of every scenario type, 0.5 s
segments starting at every 10 Hz tick); synthetic bicycle-model data are measured too.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autovla.tokenizer import Codebook, fit_codebook, import_reference
from autovla.tokenizer.fit import segments_from_trajectories
from autovla.tokenizer.report import reconstruction_errors
from autovla.tokenizer.synthetic import bicycle_trajectories

REFERENCE = Path(__file__).resolve().parents[2] / "shared/data/reference_codebook/agent_vocab.pkl"


def _time(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def throughput(cb: Codebook, plans: np.ndarray | None = None) -> list[tuple]:
    """Batch 1 and 1,024 plans of 10 steps: synthetic bicycle plans, or the given ones."""
    rows = []
    for batch in (1, 1024):
        if plans is None:
            traj = bicycle_trajectories(batch, steps=10, seed=11)
        else:
            traj = plans[np.random.default_rng(11).choice(len(plans), batch, replace=False)]

        def batched(traj=traj) -> None:
            cb.decode(cb.encode(traj))

        def loop(traj=traj) -> None:
            for one in traj:
                cb.decode_reference(cb.encode_reference(one))

        tb = _time(batched, 5 if batch == 1 else 3)
        tl = _time(loop, 3 if batch == 1 else 1)
        same = torch.equal(cb.encode(traj), cb.encode_reference(traj))
        rows.append((batch, tb * 1e3, batch / tb, tl * 1e3, tl / tb, same))
    return rows


def fit_worker(n_segments: int, size: int) -> None:
    """Run in a child process so its peak RSS is the fit's own."""
    n_traj = max(1, n_segments // 10)
    seg = segments_from_trajectories(bicycle_trajectories(n_traj, steps=10, seed=0))[:n_segments]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    cb = fit_codebook(seg, size=size, tol=0.05, seed=0, allow_fewer=True, progress=False)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "segments": len(seg),
                "tokens": cb.size,
                "seconds": dt,
                "peak_rss_mb": peak / 1024,
                "rss_before_fit_mb": before / 1024,
                "coverage": cb.meta["coverage"],
                "usage": cb.meta["usage"],
            }
        )
    )


def world_trajectories(scenes: int, seed: int, cache: str | None = None) -> np.ndarray | None:
    """Expert ego drives of the embedded world at 10 Hz, (scenes, T, 3), or None."""
    if cache and Path(cache).is_file():
        with np.load(cache, allow_pickle=False) as f:
            if len(f["drives"]) >= scenes:
                return f["drives"][:scenes]
    try:
        from autovla.sim.rollout import simulate
        from autovla.sim.scenarios import SCENARIO_TYPES, make_scenario
    except ImportError:
        return None
    names = sorted(SCENARIO_TYPES)
    drives = [
        simulate(make_scenario(names[i % len(names)], seed + i), 20.0).ego[:, :3]
        for i in range(scenes)
    ]
    if cache:
        np.savez(cache, drives=np.stack(drives))
    return np.stack(drives)


def world_data(drives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0.5 s segments starting at every 10 Hz tick, and 5 s plans (10 poses at 2 Hz) from
    every 1 s, each in its start pose's frame."""
    from autovla.geometry import to_local

    segs = [to_local(d[5:], d[:-5]) for d in drives]  # 0.5 s = 5 ticks at 10 Hz
    plans = []
    for d in drives:
        for s in range(0, len(d) - 50, 10):
            plans.append(to_local(d[s + 5 : s + 51 : 5], d[s]))
    return np.concatenate(segs), np.stack(plans)


def ade_fde(cb: Codebook, plans: np.ndarray) -> tuple[float, float, float]:
    err, _ = reconstruction_errors(cb, plans)
    return float(err.mean()), float(err[:, -1].mean()), float(np.percentile(err, 99))


def throughput_table(title: str, rows: list[tuple]) -> None:
    print(f"\n## encode+decode, 10 steps, {title}")
    print("| batch | batched ms | traj/s | loop ms | speed-up | identical |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.0f} | {r[3]:.1f} | {r[4]:.0f}x | {r[5]} |")


def timing_tables(a, ref: Codebook | None, cb_syn: Codebook) -> None:
    for name, cb_tp in (("fitted on bicycle data", cb_syn), ("reference", ref)):
        if cb_tp is not None:
            throughput_table(f"K={cb_tp.size}, {name} codebook, bicycle plans", throughput(cb_tp))
    cmd = [sys.executable, __file__, "--fit-worker", "--segments", str(a.segments),
           "--size", str(a.size), "--threads", str(a.threads)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    f = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n## K-disk fit: K={a.size}, synthetic bicycle segments")
    print("| segments | tokens | seconds | peak RSS MB (process) | coverage | usage |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {f['segments']} | {f['tokens']} | {f['seconds']:.1f} | {f['peak_rss_mb']:.0f} "
        f"| {f['coverage']:.3f} | {f['usage']:.3f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--scenes", type=int, default=600, help="embedded-world training scenes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--world-cache", default=None, help="npz file caching simulated drives")
    ap.add_argument("--world-tols", default="0.05,0.03", help="tols for the world codebooks")
    ap.add_argument("--only-world", action="store_true", help="only the world ADE/FDE table")
    ap.add_argument("--fit-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.fit_worker:
        fit_worker(a.segments, a.size)
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    ref = import_reference(REFERENCE) if REFERENCE.is_file() else None
    rows = []
    if not a.only_world:
        syn_train = bicycle_trajectories(max(a.segments // 10, 1), 10, seed=0)
        syn_test = bicycle_trajectories(5000, 10, seed=123)
        cb_syn = fit_codebook(syn_train, size=a.size, allow_fewer=True, progress=False)
        timing_tables(a, ref, cb_syn)
        rows.append(("synthetic bicycle", "fitted", cb_syn, syn_test))
        if ref is not None:
            rows.append(("synthetic bicycle", "reference", ref, syn_test))

    t = time.perf_counter()
    drives = world_trajectories(a.scenes + a.scenes // 4, 0, a.world_cache)
    if drives is not None:
        print(f"(world drives ready in {time.perf_counter() - t:.0f} s)", file=sys.stderr)
        seg, _ = world_data(drives[: a.scenes])
        _, plans = world_data(drives[a.scenes :])
        name = f"embedded world ({a.scenes} scenes, {len(seg)} seg)"
        for tol in (float(v) for v in a.world_tols.split(",")):
            cb_w = fit_codebook(seg, size=a.size, tol=tol, allow_fewer=True, progress=False)
            rows.append((name, f"fitted, tol {tol}", cb_w, plans))
        if ref is not None:
            rows.append((name, "reference", ref, plans))
        if not a.only_world:
            for _, kind, cb, _ in [r for r in rows if r[0] == name][-2:]:
                title = f"K={cb.size}, {kind} codebook, held-out world plans"
                throughput_table(title, throughput(cb, plans))

    print("\n## reconstruction on held-out 5 s plans (10 poses)")
    print("| data | codebook | tokens | coverage | ADE m | FDE m | p99 err m |")
    print("|---|---|---|---|---|---|---|")
    for name, kind, cb, plans in rows:
        ade, fde, p99 = ade_fde(cb, plans)
        cov = cb.meta.get("coverage", float("nan"))
        print(
            f"| {name} ({len(plans)} plans) | {kind} | {cb.size} | {cov:.3f} | {ade:.4f} | "
            f"{fde:.4f} | {p99:.3f} |"
        )


if __name__ == "__main__":
    main()
