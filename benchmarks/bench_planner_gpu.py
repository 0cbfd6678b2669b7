"""Planner latency on a GPU for the Qwen2.5-VL-3B architecture (random weights, bf16).

Reference input: 3 cameras x 4 frames, 109,760 pixels per frame (16:9 frames). Measures the
vision encoder, the prefill, per-token decode, a fast plan and a slow plan (about 400
characters of reasoning forced), each against plain `generate()` of the same number of tokens
on the same inputs, in one run. Targets on one H100: fast plan <= 60 ms, slow plan <= 400 ms.

    python benchmarks/bench_planner_gpu.py [--repeats 20] [--batch-sizes 1,8]
    python benchmarks/bench_planner_gpu.py --preset tiny --device cpu --repeats 2   # smoke test

No weights are downloaded: the model is built from its published configuration.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_planner import make_samples, pct, reasoning_tokens, time_generate

FRAME_SIZE = (441, 248)  # 16:9, ~109,400 pixels: resized by the processor to the budget


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def codebook(k: int):
    from autovla.tokenizer import Codebook
    from autovla.tokenizer.contours import token_contours

    g = torch.Generator().manual_seed(0)
    ends = torch.zeros(k, 3)
    ends[1:, 0] = torch.rand(k - 1, generator=g) * 10
    ends[1:, 1] = torch.rand(k - 1, generator=g) - 0.5
    return Codebook(token_contours(ends, 4.8, 2.0))


def measure(vla, samples, root, bs: int, repeats: int, n_reason: int) -> list[tuple]:
    from autovla.model.planner import Planner

    planner = Planner(vla, max_reasoning_tokens=n_reason)
    batch = samples[:bs]
    rows = []
    for mode in ("fast", "slow"):
        for _ in range(2):
            planner.plan(batch, root, mode=mode)  # warm-up (kernels, allocator)
        runs = [planner.plan(batch, root, mode=mode)[0] for _ in range(repeats)]
        t = {k: [r.timings[k] for r in runs] for k in runs[0].timings}
        model_time = [
            v + p + d for v, p, d in zip(t["vision"], t["prefill"], t["decode"], strict=True)
        ]
        sampled = runs[0].num_generated_tokens
        answer = len(runs[0].completion_ids)
        steps = sampled if mode == "slow" else 10
        gen = [time_generate(vla, batch, root, answer) for _ in range(max(2, repeats // 4))]
        rows.append(
            (bs, mode, sampled, answer,
             1000 * statistics.median(t["inputs"]), 1000 * statistics.median(t["vision"]),
             1000 * statistics.median(t["prefill"]),
             1000 * statistics.median(t["decode"]) / steps,
             1000 * pct(model_time, 50), 1000 * pct(model_time, 90), 1000 * pct(t["total"], 50),
             1000 * pct(gen, 50))
        )  # fmt: skip
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen2.5-vl-3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--codebook-size", type=int, default=2048)
    ap.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, ...)")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    from autovla.model.checkpoint import build_model

    t0 = time.perf_counter()
    vla = build_model(
        args.preset, codebook(args.codebook_size), seed=0, dtype=dtype, device=device,
        random_weights=True,
    )  # fmt: skip
    vla.model.set_attn_implementation(args.attn)
    build_s = time.perf_counter() - t0
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = make_samples(root, max(batch_sizes), size=FRAME_SIZE)
        from autovla.model.inputs import encode_batch

        probe = encode_batch(vla.processor, samples[:1], root, vla.fmt)
        vision_tokens = int((probe["input_ids"] == vla.model.config.video_token_id).sum())
        n_reason = reasoning_tokens(vla)
        rows = []
        for bs in batch_sizes:
            rows += measure(vla, samples, root, bs, args.repeats, n_reason)
    params = sum(p.numel() for p in vla.model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"planner latency: {args.preset} ({params / 1e9:.2f} B params, random weights, "
        f"{args.dtype}, {args.attn}) on {name}; {vision_tokens} vision tokens / sample "
        f"(grid {probe['video_grid_thw'][0].tolist()} per camera), prompt "
        f"{probe['input_ids'].shape[1]} tokens; slow = {n_reason} reasoning tokens (~400 chars); "
        f"built in {build_s:.0f} s"
    )
    cols = ("batch", "mode", "sampled tok", "answer tok", "inputs ms", "vision ms", "prefill ms",
            "decode ms/token", "plan p50 ms", "plan p90 ms", "plan+inputs p50 ms",
            "generate() p50 ms")  # fmt: skip
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r))
    print(
        "plan = vision + prefill + decode on the device; inputs = image loading + processor (CPU)."
    )


if __name__ == "__main__":
    main()
