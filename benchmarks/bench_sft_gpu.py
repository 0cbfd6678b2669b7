"""SFT throughput of the Qwen2.5-VL-3B recipe on one GPU: tokens/s and model FLOPs
utilisation over N optimiser steps on full-size samples (3 cameras x 4 frames at the preset's
pixel budget, a ~400-character chain of thought, 10 action tokens).

The step is the recipe's (configs/qwen2.5-vl-3b-sft.yaml): float32 master weights with bf16
autocast, vision encoder frozen, language model trained (or `--lora`), gradient checkpointing,
AdamW, gradient clipping at 1.0; the loss is the model's next-token cross-entropy on the answer
(the SFT loss's weighting does not change the arithmetic). The same batch is reused every step,
so data loading is not measured.

    MFU = (6 x trained + 2 x frozen parameters) x tokens/s / peak bf16 FLOP/s

(recomputation by gradient checkpointing is not counted, as usual for model FLOPs).

    python benchmarks/bench_sft_gpu.py [--steps 50] [--batch-size 4] [--json out.json]
    python benchmarks/bench_sft_gpu.py --preset tiny --device cpu --steps 2   # smoke test
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

# Dense bf16 tensor-core peaks (FLOP/s) by device name; --peak-tflops overrides.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)


def peak_flops(name: str, override: float | None) -> float:
    if override:
        return override * 1e12
    for key, value in PEAK_BF16:
        if key in name:
            return value
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen2.5-vl-3b")
    ap.add_argument("--model", help="AutoVLA directory to load instead of building the preset")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lora", action="store_true", help="LoRA on q/k/v/o instead of the full LM")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s (default: by name)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from autovla.model.backbone import quiet_transformers
    from autovla.model.checkpoint import AutoVLA, build_model
    from autovla.model.inputs import encode_batch
    from autovla.train import model_setup as ms
    from autovla.train.config import LoraConfig
    from bench_3b_cpu import answer_text, make_dataset
    from bench_planner_gpu import codebook

    quiet_transformers()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    if args.model:
        vla = AutoVLA.from_pretrained(args.model, device=device)
    else:
        vla = build_model(args.preset, codebook(2048), dtype=torch.bfloat16 if cuda else None,
                          device=device, random_weights=True)  # fmt: skip
    model = vla.model
    ms.set_trainable(model, freeze_vision=True, freeze_language=args.lora)
    if args.lora:
        ms.apply_lora(model, LoraConfig(enabled=True))
    # as the trainer: float32 master weights for what trains, frozen weights stay bf16; bf16
    # autocast does the arithmetic
    ms.master_precision(model)
    if not args.no_checkpointing:
        ms.enable_gradient_checkpointing(model)
    model.train()
    trained, total = ms.count_params(model)
    opt = torch.optim.AdamW(ms.param_groups(model, 0.01), lr=1e-5)
    setup_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = make_dataset(root, args.batch_size)
        answers = [answer_text(vla, s) for s in samples]
        batch = encode_batch(vla.processor, samples, root, vla.fmt, answers=answers)
    labels = batch.pop("labels").to(device)
    batch.pop("action_mask", None)
    batch = {k: v.to(device) for k, v in batch.items()}
    tokens = int(batch["attention_mask"].sum())
    vision = int((batch["input_ids"] == model.config.video_token_id).sum())

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(**batch, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    sync()
    elapsed = time.perf_counter() - t0
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak = peak_flops(name, args.peak_tflops)
    tps = tokens * args.steps / elapsed
    res = {
        "device": name,
        "params_trained": trained,
        "params_frozen": total - trained,
        "lora": args.lora,
        "gradient_checkpointing": not args.no_checkpointing,
        "batch_size": args.batch_size,
        "tokens_per_step": tokens,
        "vision_tokens_per_step": vision,
        "steps": args.steps,
        "step_s": elapsed / args.steps,
        "tokens_per_s": tps,
        "model_flops_per_token": 6 * trained + 2 * (total - trained),
        "peak_flops": peak,
        "mfu": (6 * trained + 2 * (total - trained)) * tps / peak,
        "loss_first_last": [losses[0], losses[-1]],
        "setup_s": setup_s,
        "max_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    print(
        f"sft throughput on {name}: {trained:,} trained / {total - trained:,} frozen parameters, "
        f"batch {args.batch_size} x {tokens // args.batch_size} tokens ({vision} vision), "
        f"{res['step_s'] * 1000:.0f} ms/step, {tps:,.0f} tokens/s, MFU {100 * res['mfu']:.1f} %"
    )


if __name__ == "__main__":
    main()
