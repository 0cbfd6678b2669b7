"""Planner latency on a GPU for the Qwen2.5-VL-3B architecture (random weights, bf16).

Reference input: 3 cameras x 4 frames, 109,760 pixels per frame (16:9 frames). Fast and slow
plans (about 400 characters of reasoning forced), batch 1 and 8, for each decoding path
(reference: dynamic cache; fast: static cache; fast+compile: its per-token step compiled with
torch.compile mode "reduce-overhead", CUDA graphs), against plain `generate()` of the same
number of tokens on the same inputs, in one run. Targets on one H100: fast plan p50 <= 60 ms,
slow plan p50 <= 400 ms at batch 1 ("model" = vision + prefill + decode on the device;
"inputs" = image loading and the processor, on the CPU).

    python benchmarks/bench_planner_gpu.py [--repeats 10] [--batch-sizes 1,8] [--json out.json]
    python benchmarks/bench_planner_gpu.py --preset tiny --device cpu --repeats 2   # smoke test

No weights are downloaded: the model is built from its published configuration, or loaded
from `--model` (an AutoVLA directory, e.g. built once by benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_planner import VARIANTS, make_samples, markdown_table, reasoning_tokens, run

FRAME_SIZE = (441, 248)  # 16:9, ~109,400 pixels: resized by the processor to the budget

COLUMNS = (
    ("batch", "batch"), ("mode", "mode"), ("decoding", "decoding"),
    ("sampled_tokens", "tokens chosen"), ("answer_tokens", "answer tokens"),
    ("identical", "same tokens"), ("inputs_ms", "inputs ms"), ("vision_ms", "vision ms"),
    ("prefill_ms", "prefill ms"), ("decode_ms_per_token", "decode ms/token"),
    ("model_p50_ms", "model p50 ms"), ("model_p90_ms", "model p90 ms"),
    ("plan_p50_ms", "plan+inputs p50 ms"), ("generate_p50_ms", "generate() p50 ms"),
)  # fmt: skip


def codebook(k: int):
    from autovla.tokenizer import Codebook
    from autovla.tokenizer.contours import token_contours

    g = torch.Generator().manual_seed(0)
    ends = torch.zeros(k, 3)
    ends[1:, 0] = torch.rand(k - 1, generator=g) * 10
    ends[1:, 1] = torch.rand(k - 1, generator=g) - 0.5
    return Codebook(token_contours(ends, 4.8, 2.0))


def load_or_build(args, device: torch.device, dtype: torch.dtype):
    from autovla.model.checkpoint import AutoVLA, build_model

    if args.model:
        return AutoVLA.from_pretrained(args.model, device=device, dtype=dtype)
    vla = build_model(
        args.preset, codebook(args.codebook_size), seed=0, dtype=dtype, device=device,
        random_weights=True, action_init="geometry",  # distinct action rows: no exact ties
    )  # fmt: skip
    return vla


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen2.5-vl-3b")
    ap.add_argument("--model", help="AutoVLA directory to load instead of building the preset")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--modes", default="fast,slow")
    ap.add_argument("--decodings", default="reference,fast", help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--no-generate", action="store_true", help="skip the generate() column")
    ap.add_argument("--codebook-size", type=int, default=2048)
    ap.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, ...)")
    ap.add_argument("--json", type=Path, help="write the rows (and run facts) here as they come")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    from autovla.model.backbone import quiet_transformers
    from autovla.model.inputs import encode_batch

    quiet_transformers()
    t0 = time.perf_counter()
    vla = load_or_build(args, device, dtype)
    vla.model.set_attn_implementation(args.attn)
    build_s = time.perf_counter() - t0
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    variants = args.decodings.split(",")
    params = sum(p.numel() for p in vla.model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    facts: dict = {"device": name, "params": params, "dtype": args.dtype, "attn": args.attn,
                   "build_or_load_s": build_s, "variants": variants}  # fmt: skip

    def dump(rows):
        if args.json:
            args.json.write_text(json.dumps({**facts, "rows": rows}, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = make_samples(root, max(batch_sizes), size=FRAME_SIZE)
        probe = encode_batch(vla.processor, samples[:1], root, vla.fmt)
        facts["vision_tokens"] = int((probe["input_ids"] == vla.model.config.video_token_id).sum())
        facts["prompt_tokens"] = int(probe["input_ids"].shape[1])
        facts["grid_per_camera"] = probe["video_grid_thw"][0].tolist()
        facts["reasoning_tokens"] = n_reason = reasoning_tokens(vla)
        dump([])
        rows = run(vla, samples, root, batch_sizes, args.repeats, n_reason, variants,
                   modes=tuple(args.modes.split(",")), generate=not args.no_generate,
                   on_row=dump)  # fmt: skip
    print(
        f"planner latency: {args.preset if not args.model else args.model} "
        f"({params / 1e9:.2f} B params, {args.dtype}, {args.attn}) on {name}; "
        f"{facts['vision_tokens']} vision tokens / sample (grid {facts['grid_per_camera']} per "
        f"camera), prompt {facts['prompt_tokens']} tokens; slow = {n_reason} reasoning tokens "
        f"(~400 chars); built/loaded in {build_s:.0f} s"
    )
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
