"""RFT step speed: time per GRPO step, split into sampling and the rest, for a few (B, G).

    python benchmarks/bench_rft.py --model DIR --data DATASET [--steps 3] [--reward pdms]
        [--shapes 2x4,4x8] [--threads 1]

Prints one row per (prompts per step B, group size G): seconds per step, of which sampling
(the planner), completions per second, and the share of slow completions. The first step of
each row is a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="AutoVLA model directory (the SFT model)")
    ap.add_argument("--data", required=True, help="dataset directory")
    ap.add_argument("--split", default="train")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--reward", default="pdms", help="the driving-score term")
    ap.add_argument("--shapes", default="2x4,4x8", help="comma-separated BxG")
    ap.add_argument("--max-reasoning-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 suits tiny models)")
    args = ap.parse_args()

    from autovla.train.rft import RFT
    from autovla.train.rft_config import RFTConfig

    rows = []
    for shape in args.shapes.split(","):
        b, g = (int(x) for x in shape.split("x"))
        with tempfile.TemporaryDirectory() as out:
            cfg = RFTConfig.model_validate(
                {
                    "model": {"path": args.model},
                    "data": {"datasets": [{"path": args.data, "split": args.split}]},
                    "grpo": {
                        "prompts_per_step": b,
                        "group_size": g,
                        "max_reasoning_tokens": args.max_reasoning_tokens,
                    },
                    "reward": {
                        "functions": [
                            {"name": args.reward},
                            {"name": "reasoning_length", "weight": -0.3, "k": 0.002, "c": 400},
                        ]
                    },
                    "train": {"max_steps": args.steps + 1, "torch_threads": args.threads},
                    "output": {"dir": out, "tensorboard": False, "progress": False},
                }
            )
            run = RFT(cfg)
            batches = run.batches(0)
            run.step(next(batches), 0)  # warm-up
            stats = []
            for s in range(1, args.steps + 1):
                t0 = time.perf_counter()
                st = run.step(next(batches), s)
                st["wall"] = time.perf_counter() - t0
                stats.append(st)
        wall = np.mean([s["wall"] for s in stats])
        gen = np.mean([s["gen_s"] for s in stats])
        slow = sum(s["slow"] for s in stats) / sum(s["n"] for s in stats)
        rows.append((b, g, wall, gen, b * g / wall, slow))

    print(f"{'B':>3} {'G':>3} {'s/step':>8} {'sampling s':>11} {'compl/s':>8} {'slow':>5}")
    for b, g, wall, gen, cps, slow in rows:
        print(f"{b:>3} {g:>3} {wall:>8.2f} {gen:>11.2f} {cps:>8.2f} {slow:>5.2f}")


if __name__ == "__main__":
    main()
