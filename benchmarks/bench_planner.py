"""Planner latency on the CPU (tiny or small preset): fast vs slow plans, batch 1 and 8, the
reference decoding path vs the fast one (static cache; optionally compiled), against plain
`model.generate()` producing the same number of tokens from the same inputs.

    .venv/bin/python benchmarks/bench_planner.py [--preset small] [--threads 1] [--repeats 10]
        [--decodings reference,fast,fast+compile]

"same tokens" compares every variant's answers with the first variant's.

The slow plan reasons for about 400 characters (the reasoning is capped at the token count of
a 400-character chain of thought; a random model never closes it earlier by choice).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_samples(root: Path, n: int, size: tuple[int, int] = (224, 112)):
    from autovla.data.schema import STANDARD_CAMERAS, DrivingSample, EgoState

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        cams = {}
        for cam in STANDARD_CAMERAS:
            cams[cam] = []
            for t in range(4):
                rel = f"img/{i}/{cam}_{t}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / rel)
                cams[cam].append(rel)
        v = float(rng.uniform(0, 15))
        out.append(
            DrivingSample(
                id=f"b{i}",
                source="synthetic",
                split="test",
                cameras=cams,
                ego=EgoState(vx=v),
                instruction="go straight",
                history=[(-v * 0.5 * k, 0.0, 0.0) for k in (3, 2, 1, 0)],
            )
        )
    return out


def reasoning_tokens(vla, chars: int = 400) -> int:
    """Tokens of a ~`chars`-character chain of thought in this model's tokenizer."""
    from autovla.model.corpus import reasoning_text

    rng = np.random.default_rng(0)
    text = ""
    while len(text) < chars:
        text += reasoning_text(rng) + "\n"
    return len(vla.tokenizer(text[:chars], add_special_tokens=False)["input_ids"])


def time_generate(vla, samples, root, new_tokens: int) -> float:
    """Seconds for plain greedy generate() of exactly `new_tokens` tokens (inputs included)."""
    from autovla.model.inputs import encode_batch

    t0 = time.perf_counter()
    batch = encode_batch(vla.processor, samples, root, vla.fmt, padding_side="left")
    batch = {k: v.to(vla.device) for k, v in batch.items()}
    if "pixel_values_videos" in batch:
        batch["pixel_values_videos"] = batch["pixel_values_videos"].to(vla.model.dtype)
    with torch.inference_mode():
        vla.model.generate(
            **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            pad_token_id=vla.tokenizer.pad_token_id,
        )  # fmt: skip
    if vla.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# Planner variants: name -> Planner keyword arguments.
VARIANTS = {
    "reference": {"decoding": "reference"},
    "fast": {"decoding": "fast"},
    "fast+compile": {"decoding": "fast", "compile": True},
}


def run(
    vla,
    samples,
    root,
    batch_sizes,
    repeats,
    max_reasoning,
    variants,
    modes=("fast", "slow"),
    generate=True,
    on_row=None,
) -> list[dict]:
    """Per batch size and mode: each variant's latency (runs interleaved, so a busy machine
    slows every variant alike), whether its tokens equal the first variant's, and generate().
    `on_row(rows)` is called after every measurement (partial results survive a timeout)."""
    from autovla.model.planner import Planner

    planners = {
        v: Planner(vla, max_reasoning_tokens=max_reasoning, **VARIANTS[v]) for v in variants
    }
    rows = []
    for bs in batch_sizes:
        batch = samples[:bs]
        for mode in modes:
            first = {v: p.plan(batch, root, mode=mode) for v, p in planners.items()}  # warm-up
            base = [r.completion_ids for r in first[variants[0]]]
            runs: dict[str, list[dict]] = {v: [] for v in variants}
            for _ in range(repeats):
                for v, p in planners.items():
                    res = p.plan(batch, root, mode=mode)
                    runs[v].append(res[0].timings)
            answer_len = len(first[variants[0]][0].completion_ids)
            gen = (
                [time_generate(vla, batch, root, answer_len) for _ in range(max(2, repeats // 3))]
                if generate
                else []
            )
            ref_total = pct([t["total"] for t in runs[variants[0]]], 50)
            for v in variants:
                t = runs[v]
                total = pct([x["total"] for x in t], 50)
                model_t = [x["vision"] + x["prefill"] + x["decode"] for x in t]
                sampled = first[v][0].num_generated_tokens
                rows.append(
                    {
                        "batch": bs,
                        "mode": mode,
                        "decoding": v,
                        "sampled_tokens": first[v][0].num_generated_tokens,
                        "answer_tokens": len(first[v][0].completion_ids),
                        "identical": [r.completion_ids for r in first[v]] == base,
                        "plan_p50_ms": 1000 * total,
                        "plan_p90_ms": 1000 * pct([x["total"] for x in t], 90),
                        "model_p50_ms": 1000 * pct(model_t, 50),
                        "model_p90_ms": 1000 * pct(model_t, 90),
                        **{
                            f"{k}_ms": 1000 * statistics.median(x[k] for x in t)
                            for k in ("inputs", "vision", "prefill", "decode")
                        },
                        "decode_ms_per_token": 1000
                        * statistics.median(x["decode"] for x in t)
                        / max(sampled, 1),
                        "plans_per_s": bs / total,
                        "speedup": ref_total / total,
                        "generate_p50_ms": 1000 * pct(gen, 50) if gen else float("nan"),
                    }
                )
                if on_row is not None:
                    on_row(rows)
    return rows


COLUMNS = (
    ("batch", "batch"), ("mode", "mode"), ("decoding", "decoding"),
    ("sampled_tokens", "tokens chosen"), ("answer_tokens", "answer tokens"),
    ("identical", "same tokens"), ("plan_p50_ms", "plan p50 ms"), ("plan_p90_ms", "plan p90 ms"),
    ("inputs_ms", "inputs ms"), ("vision_ms", "vision ms"), ("prefill_ms", "prefill ms"),
    ("decode_ms", "decode ms"), ("plans_per_s", "plans/s"), ("speedup", "speed-up"),
    ("generate_p50_ms", "generate() p50 ms"),
)  # fmt: skip


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    def fmt(v):
        if isinstance(v, bool):
            return "yes" if v else "NO"
        if v is None or (isinstance(v, float) and v != v):  # not measured
            return "-"
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(title for _, title in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for r in rows:
        lines.append("| " + " | ".join(fmt(r[key]) for key, _ in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = default)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--codebook-size", type=int, default=2048)
    ap.add_argument(
        "--decodings", default="reference,fast", help=f"variants: {', '.join(VARIANTS)}"
    )
    ap.add_argument("--no-generate", action="store_true", help="skip the generate() column")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from autovla.model.checkpoint import build_model
    from autovla.tokenizer import Codebook
    from autovla.tokenizer.contours import token_contours

    g = torch.Generator().manual_seed(0)
    ends = torch.zeros(args.codebook_size, 3)
    ends[1:, 0] = torch.rand(args.codebook_size - 1, generator=g) * 10
    ends[1:, 1] = torch.rand(args.codebook_size - 1, generator=g) - 0.5
    codebook = Codebook(token_contours(ends, 4.8, 2.0))
    # geometry init: distinct action-token rows (mean init ties every action token, and the
    # two decoding paths may break exact ties differently)
    vla = build_model(args.preset, codebook, seed=0, action_init="geometry")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = make_samples(root, max(batch_sizes))
        n_reason = reasoning_tokens(vla)
        variants = args.decodings.split(",")
        rows = run(vla, samples, root, batch_sizes, args.repeats, n_reason, variants,
                   generate=not args.no_generate)  # fmt: skip
    print(
        f"planner latency, preset {args.preset}, CPU, {torch.get_num_threads()} thread(s), "
        f"{args.codebook_size} action tokens, slow = {n_reason} reasoning tokens (~400 chars), "
        f"{args.repeats} interleaved repeats; speed-up = {variants[0]} p50 / p50"
    )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
