"""Speed and sanity of the embedded world (autovla.sim).

Prints a table of: dataset generation samples/s on one core (rendering on, default size,
metric caches with PDM-Closed included), scoring plans/s (groups of 8 as in RFT, and
batches of 64), the expert's PDMS with the NAVSIM v1.1 scorer (mean and per scenario type),
and optionally the expert's safety sweep (collisions / off-road over N seeds of every
scenario type, no rendering) and closed-loop expert driving scores.

    .venv/bin/python benchmarks/bench_sim.py [--scenes 22] [--safety-seeds 200] [--episodes 2]

The safety sweep is the check behind tests/test_sim_scenarios.py, which runs a few seeds:
`bench_sim.py --scenes 0 --safety-seeds 200` runs 200 seeds of every type (about 2 minutes on
one core) and exits 1 if the expert ever collides or leaves the road.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from autovla.data.manifest import load_samples
from autovla.scoring import load_cache, score_plans
from autovla.sim.closed_loop import expert_episode
from autovla.sim.export import generate_dataset
from autovla.sim.rollout import expert_problems
from autovla.sim.scenarios import SCENARIO_TYPES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=22, help="0: skip generation and scoring")
    ap.add_argument("--safety-seeds", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=0, help="closed-loop expert episodes per type")
    args = ap.parse_args()
    rows = []
    failed = False
    if args.scenes:  # 0: only the sweeps below
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "ds"
            t0 = time.perf_counter()
            generate_dataset(root, args.scenes, seed=0, workers=1, progress=False)
            dt = time.perf_counter() - t0
            samples = load_samples(root)
            rows.append(
                (
                    "generate (1 core, 224x112, 3 cams)",
                    f"{len(samples) / dt:.1f} samples/s",
                    f"{len(samples)} samples",
                )
            )
            data = [(load_cache(root, s), s.future_array()) for s in samples]
            rng = np.random.default_rng(0)
            noise = np.array([1, 0.3, 0.02])
            for group in (8, 64):
                plan_sets = [f[None] + rng.normal(0, 0.5, (group, 10, 3)) * noise for _, f in data]
                t0 = time.perf_counter()
                for (d, _), plans in zip(data, plan_sets, strict=True):
                    score_plans(d, plans)
                dt = time.perf_counter() - t0
                rate = f"{group * len(data) / dt:.0f} plans/s"
                rows.append(
                    (f"score_plans, groups of {group}", rate, f"{1e3 * dt / len(data):.2f} ms/call")
                )
            scored = [score_plans(d, fut[None]).row(0) for d, fut in data]
            pdms = [r["pdms"] for r in scored]
            rows.append(
                (
                    "expert PDMS (mean over samples)",
                    f"{np.mean(pdms):.3f}",
                    f"min {np.min(pdms):.3f}",
                )
            )
            by_type: dict[str, list[dict]] = {}
            for s, r in zip(samples, scored, strict=True):
                by_type.setdefault(s.scenario_type, []).append(r)
            for name, rs in sorted(by_type.items()):
                means = {k: np.mean([r[k] for r in rs]) for k in ("pdms", "ep", "ttc", "comfort")}
                note = ", ".join(f"{k} {v:.3f}" for k, v in means.items() if k != "pdms")
                rows.append((f"  {name}", f"{means['pdms']:.3f}", f"n={len(rs)}, {note}"))
    if args.safety_seeds:
        t0 = time.perf_counter()
        problems = []
        for name in SCENARIO_TYPES:
            for seed in range(args.safety_seeds):
                problems += expert_problems(name, seed, duration=10.0)
        runs = args.safety_seeds * len(SCENARIO_TYPES)
        rows.append(
            (
                f"expert safety, {args.safety_seeds} seeds x {len(SCENARIO_TYPES)} types",
                f"{len(problems)} problems",
                f"{runs / (time.perf_counter() - t0):.1f} rollouts/s",
            )
        )
        for p in problems[:20]:
            print("  ", p)
        failed = bool(problems)
    if args.episodes:
        scores = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in SCENARIO_TYPES:
                for seed in range(args.episodes):
                    r = expert_episode(name, seed, Path(tmp) / f"{name}{seed}")
                    scores.append(r.driving_score)
                    if r.driving_score < 0.95:
                        print("  ", name, seed, r)
        rows.append(
            (
                "closed-loop expert driving score",
                f"{np.mean(scores):.3f}",
                f"min {np.min(scores):.3f}, n={len(scores)}",
            )
        )
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  {'value':>18}  note")
    for name, value, note in rows:
        print(f"{name:<{w}}  {value:>18}  {note}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
