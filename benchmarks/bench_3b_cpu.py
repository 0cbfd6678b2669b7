"""Every stage of the Qwen2.5-VL-3B path on the CPU, one full-size sample, with time and peak
memory per stage: model init -> save -> reload (logits identical) -> plan fast and slow (both
decoding paths) -> one SFT step (LoRA, gradient checkpointing) -> one RFT step (G = 2) ->
resume SFT from its checkpoint.

    python benchmarks/bench_3b_cpu.py --out /tmp/bench3b                  # the 3B preset
    python benchmarks/bench_3b_cpu.py --out /tmp/b --preset small         # a quick proof
    python benchmarks/bench_3b_cpu.py --out /tmp/b --layers 2 --vision-depth 2   # 3B widths

Random weights built from the preset's published configuration (nothing is downloaded), in
bfloat16 where the CPU has native bfloat16 (AVX512-BF16 / AMX) and float32 otherwise
(`--dtype`). The sample: 3 cameras x 4 frames, resized by the processor to the preset's pixel
budget (109,760 pixels for the 3B preset), a ~400-character chain of thought and a future.
Each stage runs in its own process; its peak RSS is that process's `ru_maxrss`. The 3B preset
needs about 8 GB (bfloat16) for the model alone: run it on an otherwise idle machine.
The SFT and RFT stages go through `autovla.train.sft.train_sft` / `train.rft.train_rft` with
configs built in `sft_config` / `rft_config` below (the one place to adapt when the trainers
change).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("init", "reload", "plan", "sft", "rft", "resume")
FRAME_SIZE = (441, 248)  # 16:9; the processor resizes to the preset's pixel budget
CODEBOOK_SIZE = 2048  # the reference codebook's size


# --- setup shared by the stages ---------------------------------------------------------------
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str) -> str:
    if name == "auto":
        return "bfloat16" if cpu_has_bf16() else "float32"
    return name


def preset_of(args: argparse.Namespace):
    from autovla.model.backbone import get_preset

    p = get_preset(args.preset)
    changes: dict[str, Any] = {}
    if args.layers:
        changes["layers"] = args.layers
    if args.vision_depth:
        depth = args.vision_depth
        blocks = tuple(b for b in p.fullatt_blocks if b < depth) or (depth - 1,)
        changes.update(vision_depth=depth, fullatt_blocks=blocks)
    if changes:
        suffix = "-".join(f"{k}{v}" for k, v in changes.items() if k != "fullatt_blocks")
        p = dataclasses.replace(p, name=f"{p.name}-{suffix}", **changes)
    return p


def make_dataset(root: Path, n: int = 1) -> list[Any]:
    """Training samples (with future and reasoning) at full size, and their manifest."""
    import numpy as np

    from autovla.data.manifest import write_manifest
    from autovla.model.corpus import reasoning_text
    from bench_planner import make_samples

    rng = np.random.default_rng(0)
    samples = []
    for sample in make_samples(root, n, size=FRAME_SIZE):
        v = sample.ego.speed
        text = ""
        while len(text) < 400:
            text += reasoning_text(rng) + "\n"
        samples.append(
            type(sample).model_validate(
                {
                    **sample.model_dump(),
                    "split": "train",
                    "future": [(v * 0.5 * (k + 1), 0.0, 0.0) for k in range(10)],
                    "reasoning": text.strip(),
                }
            )
        )
    write_manifest(root, samples)
    return samples


def load_sample(root: Path) -> Any:
    from autovla.data.manifest import iter_samples

    return next(iter(iter_samples(root)))


def reference_input(vla: Any, sample: Any, root: Path):
    """The sample's prompt and a fixed completion: what the reload check compares."""
    from autovla.model.inputs import encode_batch

    batch = encode_batch(
        vla.processor, [sample.without_answer()], root, vla.fmt, padding_side="left"
    )
    completion = [vla.action_start + k for k in (3, 14, 15, 92, 65, 35, 89, 79, 32, 38)]
    return batch, [completion]


def sft_config(args: argparse.Namespace, out: Path, max_steps: int) -> Any:
    from autovla.train.config import SFTConfig

    return SFTConfig.model_validate(
        {
            "model": {"path": str(out / "model")},
            "data": {
                "datasets": [{"path": str(out / "data"), "split": "train"}],
                "shuffle_buffer": 1,
                "num_workers": 0,
            },
            "val": {"at_end": False},
            "optim": {"warmup_steps": 0},
            "sft": {"batch_size": 1, "grad_accum": 1},
            "train": {
                "max_steps": max_steps,
                "device": "cpu",
                "freeze_vision": True,
                "gradient_checkpointing": True,
                "lora": {"enabled": True},
                "torch_threads": args.threads,
            },
            "output": {
                "dir": str(out / "sft"),
                "log_every": 1,
                "tensorboard": False,
                "progress": False,
            },
        }
    )


def rft_config(
    out: Path,
    model: Path,
    data: Path,
    *,
    group_size: int = 2,
    reasoning_tokens: int = 32,
    max_steps: int = 1,
    device: str = "cpu",
    threads: int | None = None,
) -> Any:
    from autovla.train.rft_config import RFTConfig

    return RFTConfig.model_validate(
        {
            "model": {"path": str(model)},
            "data": {"datasets": [{"path": str(data), "split": "train"}], "shuffle_buffer": 1},
            "grpo": {
                "prompts_per_step": 1,
                "group_size": group_size,
                "max_reasoning_tokens": reasoning_tokens,
            },
            "reward": {"functions": [{"name": "ade"}]},
            "train": {
                "max_steps": max_steps,
                "device": device,
                "gradient_checkpointing": True,
                "torch_threads": threads,
            },
            "output": {"dir": str(out), "log_every": 1, "tensorboard": False, "progress": False},
        }
    )


def timed_rft(cfg: Any) -> dict:
    """Run `train_rft`; the last step's time split into sampling (the planner), scoring (the
    reward) and update (log-probabilities, loss, backward, optimiser), plus parameter counts."""
    import autovla.train.rft as rft

    scoring: list[float] = []
    reward = rft.compute_rewards

    def timed_reward(*a, **k):
        t0 = time.perf_counter()
        r = reward(*a, **k)
        scoring.append(time.perf_counter() - t0)
        return r

    rft.compute_rewards = timed_reward
    t0 = time.perf_counter()
    try:
        with _CountParams() as counted:
            result = rft.train_rft(cfg)
    finally:
        rft.compute_rewards = reward
    m = result.train
    split = {}
    if "gen_s" in m and "step_s" in m and scoring:
        split = {
            "step_s": m["step_s"],
            "sampling_s": m["gen_s"],
            "scoring_s": scoring[-1],
            "update_s": m["step_s"] - m["gen_s"] - scoring[-1],
        }
    return {"steps": result.steps, "train_s": time.perf_counter() - t0,
            "slow_share": m.get("slow_share"), **split, **counted}  # fmt: skip


class _CountParams:
    """Records what the trainers count as trained / total parameters."""

    def __enter__(self):
        from autovla.train import model_setup

        self.module, self.orig, self.counted = model_setup, model_setup.count_params, {}

        def spy(model):
            trained, total = self.orig(model)
            self.counted.update(trained_params=trained, frozen_params=total - trained)
            return trained, total

        model_setup.count_params = spy
        return self.counted

    def __exit__(self, *exc):
        self.module.count_params = self.orig


# --- stages (each runs in its own process) -------------------------------------------------
def stage_init(args, out: Path) -> dict:
    import torch

    from autovla.model.checkpoint import build_model
    from autovla.model.logprobs import completion_logits
    from bench_planner_gpu import codebook

    dtype = getattr(torch, resolve_dtype(args.dtype))
    (sample,) = make_dataset(out / "data")
    t0 = time.perf_counter()
    # geometry init: distinct action-token rows (mean init ties every action token, and the
    # two decoding paths may break exact ties differently)
    vla = build_model(preset_of(args), codebook(CODEBOOK_SIZE), seed=0, dtype=dtype,
                      random_weights=True, action_init="geometry")  # fmt: skip
    t_build = time.perf_counter() - t0
    vla.save_pretrained(out / "model")
    t_save = time.perf_counter() - t0 - t_build
    batch, comp = reference_input(vla, sample, out / "data")
    with torch.no_grad():
        logits, _, _ = completion_logits(vla.model, batch, comp)
    torch.save(logits, out / "init_logits.pt")
    from autovla.model.inputs import encode_batch

    full = encode_batch(vla.processor, [sample], out / "data", vla.fmt,
                        answers=[answer_text(vla, sample)])  # fmt: skip
    video = int((full["input_ids"] == vla.model.config.video_token_id).sum())
    params = sum(p.numel() for p in vla.model.parameters())
    vision = sum(p.numel() for p in vla.model.model.visual.parameters())
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "cpu_bf16": cpu_has_bf16(),
        "params": params,
        "vision_params": vision,
        "vision_tokens": video,
        "text_tokens": int(full["input_ids"].shape[1]) - video,
        "answer_tokens": int((full["labels"] != -100).sum()),
        "grid_per_camera": full["video_grid_thw"][0].tolist(),
        "build_s": t_build,
        "save_s": t_save,
        "model_gb": sum(f.stat().st_size for f in (out / "model").iterdir()) / 1e9,
    }


def answer_text(vla: Any, sample: Any) -> str:
    """The SFT target of a sample: its future as action tokens, after its reasoning."""
    import torch

    from autovla.model.prompts import render_answer

    future = torch.as_tensor(sample.future_array(), dtype=torch.float32)[None]
    return render_answer(vla.codebook.encode(future)[0].tolist(), sample.reasoning, vla.fmt)


def stage_reload(args, out: Path) -> dict:
    import torch

    from autovla.model.checkpoint import AutoVLA
    from autovla.model.logprobs import completion_logits

    t0 = time.perf_counter()
    vla = AutoVLA.from_pretrained(out / "model")
    t_load = time.perf_counter() - t0
    batch, comp = reference_input(vla, load_sample(out / "data"), out / "data")
    with torch.no_grad():
        logits, _, _ = completion_logits(vla.model, batch, comp)
    before = torch.load(out / "init_logits.pt")
    emb = vla.model.get_input_embeddings().weight
    return {
        "load_s": t_load,
        "dtype": str(vla.model.dtype).removeprefix("torch."),
        "logits_identical": bool(torch.equal(before, logits)),
        "max_abs_diff": float((before.float() - logits.float()).abs().max()),
        "tied_embeddings": vla.model.get_output_embeddings().weight.data_ptr() == emb.data_ptr(),
        "embedding_rows": int(emb.shape[0]),
    }


def stage_plan(args, out: Path) -> dict:
    from autovla.model.checkpoint import AutoVLA
    from autovla.model.planner import Planner

    vla = AutoVLA.from_pretrained(out / "model")
    sample, root = load_sample(out / "data").without_answer(), out / "data"
    res: dict[str, Any] = {}
    for mode in ("fast", "slow"):
        tokens = {}
        for decoding in ("fast", "reference"):
            planner = Planner(vla, max_reasoning_tokens=args.reasoning_tokens, decoding=decoding)
            (r,) = planner.plan([sample], root, mode=mode)
            tokens[decoding] = r.completion_ids
            t = r.timings
            res[f"{mode}_{decoding}_s"] = t["total"]
            res[f"{mode}_{decoding}_decode_s"] = t["decode"]
            res[f"{mode}_prefill_s"] = t["prefill"]
            res[f"{mode}_vision_s"] = t["vision"]
            res[f"{mode}_sampled_tokens"] = r.num_generated_tokens
        # float32: identical; bfloat16: the paths round differently and may part at a near-tie
        a, b = tokens["fast"], tokens["reference"]
        res[f"{mode}_identical"] = a == b
        if a != b:
            res[f"{mode}_first_difference"] = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
    return res


def stage_sft(args, out: Path, max_steps: int = 1) -> dict:
    from autovla.train.sft import train_sft

    t0 = time.perf_counter()
    with _CountParams() as counted:
        result = train_sft(sft_config(args, out, max_steps))
    return {
        "steps": result.steps,
        "checkpoint": str(result.checkpoint),
        "loss": result.train.get("loss"),
        "train_s": time.perf_counter() - t0,
        **counted,
    }


def stage_rft(args, out: Path) -> dict:
    cfg = rft_config(out / "rft", out / "model", out / "data",
                     reasoning_tokens=args.reasoning_tokens, threads=args.threads)  # fmt: skip
    return timed_rft(cfg)


def stage_resume(args, out: Path) -> dict:
    from autovla.train.checkpointing import latest_checkpoint

    last = latest_checkpoint(out / "sft" / "checkpoints")
    res = stage_sft(args, out, max_steps=2)
    res["resumed_from"] = last.name if last is not None else None
    return res


# --- driver ----------------------------------------------------------------------------------
def run_stage(name: str, argv: list[str], out: Path) -> dict:
    """Run one stage in a child process; its wall time and peak RSS (ru_maxrss)."""
    cmd = [sys.executable, __file__, *argv, "--stage", name]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    result_file = out / f"stage-{name}.json"
    res = json.loads(result_file.read_text()) if code == 0 and result_file.exists() else {}
    return {"stage": name, "ok": code == 0, "exit_code": code, "wall_s": wall,
            "peak_rss_gb": usage.ru_maxrss / 1e6, **res}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="working directory (model, runs)")
    ap.add_argument("--preset", default="qwen2.5-vl-3b")
    ap.add_argument("--layers", type=int, default=0, help="text layers (0: the preset's)")
    ap.add_argument("--vision-depth", type=int, default=0, help="vision blocks (0: preset's)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    ap.add_argument("--reasoning-tokens", type=int, default=32,
                    help="reasoning cap of the slow plan and the RFT samples")  # fmt: skip
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage here
    return ap


def main() -> None:
    args = build_parser().parse_args()
    out: Path = args.out
    if args.stage:
        import torch

        from autovla.model.backbone import quiet_transformers

        quiet_transformers()
        torch.set_num_threads(args.threads)
        res = globals()[f"stage_{args.stage}"](args, out)
        (out / f"stage-{args.stage}.json").write_text(json.dumps(res, indent=2))
        return
    out.mkdir(parents=True, exist_ok=True)
    argv = list(sys.argv[1:])
    rows = []
    for name in args.stages.split(","):
        if name not in STAGES:
            raise SystemExit(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        row = run_stage(name, argv, out)
        rows.append(row)
        print(f"{name}: {'ok' if row['ok'] else 'FAILED'} in {row['wall_s']:.1f} s, "
              f"peak RSS {row['peak_rss_gb']:.2f} GB", flush=True)  # fmt: skip
        if not row["ok"]:
            break
    summary = {"preset": preset_of(args).name, "threads": args.threads, "stages": rows}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(markdown(summary))


def markdown(summary: dict) -> str:
    lines = [
        f"preset {summary['preset']}, {summary['threads']} thread(s)",
        "",
        "| stage | ok | wall s | peak RSS GB | details |",
        "|---|---|---|---|---|",
    ]
    for r in summary["stages"]:
        skip = {"stage", "ok", "exit_code", "wall_s", "peak_rss_gb", "checkpoint"}
        details = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r.items()
            if k not in skip
        )
        ok = "yes" if r["ok"] else f"NO (exit {r['exit_code']})"
        lines.append(
            f"| {r['stage']} | {ok} | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} | {details} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
