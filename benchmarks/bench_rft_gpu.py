"""One RFT (GRPO) step of the Qwen2.5-VL-3B recipe on one GPU, its time split into sampling
(the planner writes G completions), scoring (the reward) and update (reference and policy
log-probabilities, loss, backward, optimiser step), through `autovla.train.rft.train_rft`.

The recipe's settings (configs/qwen2.5-vl-3b-rft.yaml): LoRA r=8 on q/k/v/o, gradient
checkpointing, bf16, group size 8, mode chosen by the model; one full-size prompt per step
(the ade reward: no scoring data needed). Two steps run; the second is reported (the first
warms the kernels up).

    python benchmarks/bench_rft_gpu.py --model DIR [--group-size 8] [--reasoning-tokens 256]
    python benchmarks/bench_rft_gpu.py --preset tiny --device cpu --group-size 2   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="AutoVLA directory (default: build the preset)")
    ap.add_argument("--preset", default="qwen2.5-vl-3b")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--reasoning-tokens", type=int, default=256, help="cap of sampled reasoning")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from autovla.model.backbone import quiet_transformers
    from bench_3b_cpu import make_dataset, rft_config, timed_rft
    from bench_planner_gpu import codebook

    quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        t0 = time.perf_counter()
        if model is None:
            from autovla.model.checkpoint import build_model

            model = work / "model"
            cuda = args.device == "cuda"
            vla = build_model(
                args.preset, codebook(2048), dtype=torch.bfloat16 if cuda else None,
                device=args.device, random_weights=True, action_init="geometry",
            )  # fmt: skip
            vla.save_pretrained(model)
            del vla
        make_dataset(work / "data")
        setup_s = time.perf_counter() - t0
        cfg = rft_config(
            work / "run", model, work / "data", group_size=args.group_size,
            reasoning_tokens=args.reasoning_tokens, max_steps=args.steps,
            device="auto" if args.device == "cuda" else "cpu",
        )  # fmt: skip
        res = {"group_size": args.group_size, "reasoning_cap": args.reasoning_tokens,
               "setup_s": setup_s, **timed_rft(cfg)}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    print(
        "rft step: "
        + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items())
    )


if __name__ == "__main__":
    main()
