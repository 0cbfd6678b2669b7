"""SFT throughput: samples/s of the whole training loop, and where a step's time goes.

    python benchmarks/bench_sft.py                       # tiny preset, CPU, synthetic data
    python benchmarks/bench_sft.py --data /path/to/sim --steps 20 --batch 8
    python benchmarks/bench_sft.py --preset qwen2.5-vl-3b --device cuda --batch 1 --steps 10

Prints a table: the loop's samples/s (data loading in workers, forward, backward, optimiser),
and, measured apart on one batch, the collate (image decoding + tokenizing) and the
forward+backward time. On a GPU it also prints the model FLOPs utilisation (MFU) from the
usual 6 x trained parameters x tokens (+ 2 x frozen parameters x tokens) count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def synthetic_dataset(root: Path, n: int) -> Path:
    from tests.conftest import make_sample
    from tests.train_sft_fixtures import REASONING

    from autovla.data.manifest import write_manifest

    samples = []
    for i in range(n):
        s = make_sample(i, root)
        samples.append(s.model_copy(update={"reasoning": REASONING}) if i % 3 == 0 else s)
    write_manifest(root, samples)
    return root


def codebook_file(path: Path, size: int) -> Path:
    from autovla.tokenizer import Codebook
    from autovla.tokenizer.contours import token_contours

    g = torch.Generator().manual_seed(0)
    ends = torch.zeros(size, 3)
    ends[1:, 0] = torch.rand(size - 1, generator=g) * 12.0
    ends[1:, 1] = (torch.rand(size - 1, generator=g) - 0.5) * 1.5
    ends[1:, 2] = (torch.rand(size - 1, generator=g) - 0.5) * 0.3
    Codebook(token_contours(ends, 4.8, 2.0)).save(path)
    return path


def parts(vla, items, device: str) -> dict[str, float]:
    """Collate time and forward+backward time of one batch (after one warm-up)."""
    from autovla.train.collate import SFTCollator
    from autovla.train.loss import sft_loss
    from autovla.train.sft import MODEL_KEYS

    col = SFTCollator(vla.processor, vla.fmt, vla.codebook, "dual", 40.0)
    t = time.perf_counter()
    batch = col(items)
    t_collate = time.perf_counter() - t
    model = vla.model.to(device).train()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    times = []
    for _ in range(3):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            logits = model(
                **{k: batch[k].to(device) for k in MODEL_KEYS if k in batch}, use_cache=False
            ).logits
        out = sft_loss(
            logits,
            batch["labels"].to(device),
            batch["action_mask"].to(device),
            batch["sample_weight"],
        )
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    tokens = int(batch["attention_mask"].sum())
    return {"collate_s": t_collate, "fwd_bwd_s": min(times[1:]), "tokens": tokens}


def mfu(vla, tokens: int, seconds: float, freeze_vision: bool) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    if peak is None:
        return None
    m = vla.model
    n_vis = sum(p.numel() for p in m.model.visual.parameters())
    n_lm = sum(p.numel() for p in m.parameters()) - n_vis
    # Vision params see patches, not text tokens: counting them per token over-estimates a
    # little; the LM term dominates at 3B.
    flops = 6 * n_lm * tokens + (2 if freeze_vision else 6) * n_vis * tokens
    return flops / seconds / peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset dir (default: a synthetic one)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--codebook-size", type=int, default=2048)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from autovla.config import load_config
    from autovla.model.checkpoint import build_model
    from autovla.tokenizer import Codebook
    from autovla.train.config import SFTConfig
    from autovla.train.data import MixedStream, Source
    from autovla.train.sft import train_sft

    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    data = args.data or synthetic_dataset(tmp / "ds", 48)
    cb = codebook_file(tmp / "codebook.safetensors", args.codebook_size)
    t = time.perf_counter()
    vla = build_model(args.preset, Codebook.load(cb), seed=0)
    vla.save_pretrained(tmp / "model")
    t_build = time.perf_counter() - t
    stream = MixedStream([Source(str(data))], 0, 1)
    items = [it for _, it in zip(range(args.batch), stream, strict=False)]
    p = parts(vla, items, args.device)
    del vla
    cfg = load_config(
        SFTConfig,
        None,
        [
            f"model.path={tmp / 'model'}",
            f"data.datasets=[{{path: {data}}}]",
            f"data.num_workers={args.workers}",
            f"sft.batch_size={args.batch}",
            "sft.grad_accum=1",
            f"train.max_steps={args.steps}",
            f"train.device={'cpu' if args.device == 'cpu' else 'auto'}",
            "train.freeze_vision=true",
            f"train.gradient_checkpointing={args.preset != 'tiny'}",
            "optim.warmup_steps=1",
            f"output.dir={tmp / 'run'}",
            f"output.log_every={args.steps}",
            "output.progress=false",
            "output.tensorboard=false",
        ],
    )
    result = train_sft(cfg)
    from autovla.model.checkpoint import AutoVLA

    rows = [
        ("preset", args.preset),
        ("device", torch.cuda.get_device_name() if args.device == "cuda" else "cpu"),
        ("torch threads", torch.get_num_threads()),
        ("batch x steps", f"{args.batch} x {args.steps}"),
        ("tokens per batch", p["tokens"]),
        ("build model (s)", f"{t_build:.1f}"),
        ("collate one batch (s)", f"{p['collate_s']:.3f}"),
        ("forward+backward one batch (s)", f"{p['fwd_bwd_s']:.3f}"),
        ("training loop (samples/s)", f"{result.samples_per_s:.2f}"),
    ]
    if args.device == "cuda":
        vla = AutoVLA.from_pretrained(tmp / "model")
        u = mfu(vla, p["tokens"], p["fwd_bwd_s"], True)
        rows.append(("MFU fwd+bwd (bf16 peak)", f"{u:.1%}" if u is not None else "n/a"))
    width = max(len(k) for k, _ in rows)
    print(f"\n{'SFT benchmark':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
