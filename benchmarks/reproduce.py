"""The paper's claims in miniature on the embedded world, one named, seeded experiment each.

    python benchmarks/reproduce.py                    # every experiment, full size
    python benchmarks/reproduce.py --only rft         # one experiment (repeat --only for more)
    python benchmarks/reproduce.py --quick            # tiny data and steps: a smoke run
    python benchmarks/reproduce.py --dry-run          # the stages and the expected wall time

Experiments (docs/method.md section 8 has the paper's numbers they sit beside):

* `rft`        RFT over SFT: three RFT seeds from one SFT model, PDMS with a paired 95 %
               bootstrap interval against SFT, reasoning length and slow-thinking share on
               straightforward and complex scenes.
* `waypoints`  action tokens vs text waypoints (prompt format autovla-waypoints-v1): the same
               backbone, recipe and step budget; parse failures counted; planning time.
* `reasoning`  action-only SFT vs dual-thinking SFT; the dual model forced fast, forced slow
               and free (auto) on complex and straightforward scenes; slow share by type.
* `scaling`    a quarter, a half and all of the training scenes at equal steps.
* `best-of-n`  N = 1, 2, 4, 6 sampled plans with the scorer as oracle (eval/best_of_n.py),
               and the effect of RFT on planning time.

Every experiment regenerates its data with `autovla sim generate` (fixed seeds); the data,
the codebook and the dual-thinking SFT model are built once and shared. Training runs by step
counts, never by time. Final tables are on the held-out **test** split; `--split val` runs the
same evaluations on val (for choosing recipes) and writes its tables beside the runs instead
of docs/results.md. Each stage is an `autovla ...` command with an output marker, run through
the demo's stage machinery (`autovla.demo.run_stages`): a rerun skips finished stages and an
interrupted training resumes from its last checkpoint. Before it starts the script prints
the wall time it expects on the 2-core machine, from the per-unit costs in COSTS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from autovla.config import recipe_path
from autovla.demo import DemoError, Stage, run_stages, stage_seconds
from autovla.io import atomic_open

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("rft", "waypoints", "reasoning", "scaling", "best-of-n")
STATE_FILE = "stages.json"


# --- settings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Sizes of one reproduction; FULL is what docs/results.md reports, QUICK a smoke run."""

    label: str
    scenes: int = 600  # embedded-world scenes (80 % train / 10 % val / 10 % test by seed)
    workers: int = 2  # sim generate processes
    codebook_size: int = 2048  # K (fewer when the data has fewer distinct motions)
    sft_steps: int = 3000  # configs/tiny-sft.yaml's max_steps
    sft_batch: int = 8
    sft_val_samples: int = 96  # end-of-training validation on val (the recipe's)
    rft_steps: int = 500
    rft_prompts: int = 4  # prompts per step (B)
    rft_group: int = 8  # completions per prompt (G)
    rft_seeds: tuple[int, ...] = (0, 1, 2)
    eval_limit: int | None = None  # evaluate the first N samples of the split (None: all)
    runtime_limit: int = 100  # samples planned one at a time for the planning-time tables
    best_of_n: tuple[int, ...] = (1, 2, 4, 6)
    scaling: tuple[float, ...] = (0.25, 0.5)  # training-scene fractions besides all of them
    eval_threads: int = 2  # torch threads while evaluating (planning times depend on it)
    train_threads: int | None = None  # torch threads while training (None: the recipe's)
    seed: int = 0


FULL = Settings(label="full")
QUICK = Settings(
    label="quick (smoke run: the numbers mean nothing)",
    scenes=30,
    codebook_size=256,
    sft_steps=6,
    sft_batch=4,
    sft_val_samples=2,
    rft_steps=2,
    rft_prompts=1,
    rft_group=4,
    eval_limit=8,
    runtime_limit=3,  # the first plan is a warm-up, not timed
)

# Per-unit costs on the project's 2-core CPU machine, idle (seconds). SFT is the idle
# measurement of benchmarks/README.md (3,000 steps of 8 in 14.3 min); the others were measured
# with the tiny model while the machine ran other jobs (load 6-7: about 3x oversubscribed) and
# divided by 3 - the factor that turns the loaded RFT cost into the idle 2-process figure of
# benchmarks/README.md. Loaded measurements (2026-02, data of `--quick`, an SFT model of 400
# steps that reasons on complex scenes): SFT 30 steps x 8, tokens 1.12 / waypoints 1.69
# samples/s (under different load); RFT 4 x 8 per step, 1.23 prompts/s; open loop, batches of
# 8, every plan slow, 1.15 s per sample; batch 1 (slow) 4.6 s per plan; 6 samples per scene
# 9.0 s per scene; sim generate 0.7 s per scene. Expect +-50 %: the cost of planning depends on
# how often and how long a model reasons.
COSTS = {
    "generate_scene": 0.2,  # sim generate (8 samples per scene, 2 workers)
    "codebook_sample": 0.01,  # codebook fit, per training sample, plus 10 s
    "annotate_sample": 0.002,
    "model_init": 8.0,  # tokenizer training, tiny model build, save
    "sft_sample": 0.036,  # per training sample (3.5 steps of 8 per second)
    "sft_sample_waypoints": 0.042,  # ~90 more answer tokens on ~690
    "sft_start": 60.0,  # model load, data check, end-of-training validation of 96 samples
    "rft_completion": 0.033,  # per sampled completion, with reward, reference and update
    "eval_sample": 0.25,  # open loop, greedy, batches of 8, scoring included (auto)
    "eval_sample_fast": 0.06,  # forced fast: ten action tokens
    "eval_sample_slow": 0.38,  # forced slow thinking
    "eval_sample_waypoints": 0.35,  # ~100 tokens of waypoint text (+ reasoning)
    "eval_candidate": 0.5,  # per sampled plan with --num-samples K (temperature 1)
    "eval_sample_batch1": 1.5,  # batch size 1 (planning-time runs)
    "eval_start": 10.0,  # model load, scorer, report
}
COSTS_MEASURED = (
    "idle cpu-2core; SFT measured idle, the rest measured under load 6-7 and scaled (see COSTS)"
)


# --- the stages ----------------------------------------------------------------------------------
@dataclass
class Plan:
    """Everything one invocation runs: paths and the stages of each experiment."""

    out: Path
    cfg: Settings
    split: str
    stages: dict[str, Stage] = field(default_factory=dict)  # by name, in order
    experiments: dict[str, list[str]] = field(default_factory=dict)  # name -> stage names

    # paths
    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def codebook(self) -> Path:
        return self.out / "codebook.safetensors"

    def model(self, name: str) -> Path:
        return self.out / "models" / name

    def run(self, name: str) -> Path:
        return self.out / f"runs-{self.split}" / name

    def add(self, experiment: str, stage: Stage) -> str:
        self.stages.setdefault(stage.name, stage)
        names = self.experiments.setdefault(experiment, [])
        if stage.name not in names:
            names.append(stage.name)
        return stage.name


def _write_yaml(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        yaml.safe_dump(data, f, sort_keys=False)


def _train_threads(cfg: Settings) -> dict[str, int]:
    return {} if cfg.train_threads is None else {"torch_threads": cfg.train_threads}


def _threads(n: int):
    def set_threads() -> None:
        import torch

        torch.set_num_threads(n)

    return set_threads


def _samples_estimate(cfg: Settings, split: str) -> int:
    share = {"train": 0.8, "val": 0.1, "test": 0.1}[split]
    n = int(cfg.scenes * 8 * share)
    return min(n, cfg.eval_limit) if cfg.eval_limit else n


def shared_stages(p: Plan, experiment: str) -> None:
    """Data, codebook, reasoning, the dual-thinking SFT model and its evaluation."""
    cfg = p.cfg
    train_n = _samples_estimate(cfg, "train")
    p.add(
        experiment,
        Stage(
            "data",
            f"generate {cfg.scenes} embedded-world scenes (seed {cfg.seed})",
            [
                "sim",
                "generate",
                "--out",
                str(p.data),
                "--scenes",
                str(cfg.scenes),
                "--seed",
                str(cfg.seed),
                "--workers",
                str(cfg.workers),
                "--no-progress",
            ],
            [p.data / "dataset.json"],
            meta={"estimate": COSTS["generate_scene"] * cfg.scenes},
        ),
    )
    p.add(
        experiment,
        Stage(
            "codebook",
            "fit the action codebook on the training split",
            [
                "codebook",
                "fit",
                "--data",
                str(p.data),
                "--split",
                "train",
                "--size",
                str(cfg.codebook_size),
                "--seed",
                str(cfg.seed),
                "--allow-fewer",
                "--out",
                str(p.codebook),
            ],
            [p.codebook],
            meta={"estimate": 10 + COSTS["codebook_sample"] * train_n},
        ),
    )
    p.add(
        experiment,
        Stage(
            "reasoning",
            "write rule-based chains of thought for the complex scenes",
            ["annotate", "rules", str(p.data), "--seed", str(cfg.seed)],
            [],
            meta={"estimate": 3 + COSTS["annotate_sample"] * cfg.scenes * 8},
        ),
    )
    init_stage(p, experiment, "init-tokens", "autovla-v1")
    sft_stage(p, experiment, "sft", "init-tokens", "dual thinking, action tokens (shared)")
    eval_stage(p, experiment, "eval-sft", "sft", "the dual-thinking SFT model")
    p.add(
        experiment,
        Stage(
            "eval-cv",
            f"constant velocity on {p.split} (the floor)",
            [
                "eval",
                "open-loop",
                "--data",
                str(p.data),
                "--split",
                p.split,
                "--baseline",
                "constant-velocity",
                *_limit(cfg),
                "--out",
                str(p.run("eval-cv")),
                "--overwrite",
            ],
            [p.run("eval-cv") / "results.json"],
            meta={"estimate": 3 + 0.01 * _samples_estimate(cfg, p.split)},
        ),
    )


def _limit(cfg: Settings) -> list[str]:
    return ["--limit", str(cfg.eval_limit)] if cfg.eval_limit else []


def init_stage(p: Plan, experiment: str, name: str, fmt: str) -> None:
    """A fresh tiny model: the recipe's initialisation (geometry action rows, value-aware
    number tokens), the given prompt format, seed 0 for every model of the reproduction."""
    p.add(
        experiment,
        Stage(
            name,
            f"build the tiny model with prompt format {fmt}",
            [
                "model",
                "init",
                "--preset",
                "tiny",
                "--codebook",
                str(p.codebook),
                "--out",
                str(p.model(name)),
                "--seed",
                str(p.cfg.seed),
                "--prompt-format",
                fmt,
                "--action-init",
                "geometry",
                "--number-init",
                "--force",
            ],
            [p.model(name) / "autovla.json"],
            meta={"estimate": COSTS["model_init"]},
        ),
    )


def sft_stage(
    p: Plan,
    experiment: str,
    name: str,
    init: str,
    describe: str,
    variant: str = "dual",
    train_data: Path | None = None,
    prepare=None,
) -> None:
    """SFT with configs/tiny-sft.yaml from model `init`, by step count (no time budget)."""
    cfg = p.cfg
    run_dir = p.out / "train" / name
    config = p.out / "configs" / f"{name}.yaml"

    def write_config() -> None:
        if prepare is not None:
            prepare()
        _write_yaml(
            config,
            {
                "inherit": str(recipe_path("tiny-sft.yaml")),
                "model": {"path": str(p.model(init)), "codebook": str(p.codebook)},
                "data": {"datasets": [{"path": str(train_data or p.data), "split": "train"}]},
                "val": {
                    "datasets": [{"path": str(p.data), "split": "val"}],
                    "max_samples": cfg.sft_val_samples,
                },
                "sft": {"variant": variant, "batch_size": cfg.sft_batch},
                "train": {
                    "max_steps": cfg.sft_steps,
                    "max_minutes": None,
                    "seed": cfg.seed,
                    **_train_threads(cfg),
                },
                "output": {"dir": str(run_dir)},
            },
        )

    per_sample = COSTS["sft_sample_waypoints" if "waypoints" in init else "sft_sample"]

    def finish() -> None:  # the trainer keeps run_dir/final at its last checkpoint
        final = p.model(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        final.unlink(missing_ok=True)
        final.symlink_to((run_dir / "final").resolve())

    p.add(
        experiment,
        Stage(
            name,
            f"SFT {cfg.sft_steps} steps: {describe}",
            ["train", "sft", "--config", str(config)],
            [p.model(name) / "autovla.json"],
            prepare=write_config,
            finish=finish,
            meta={"estimate": COSTS["sft_start"] + per_sample * cfg.sft_steps * cfg.sft_batch},
        ),
    )


def rft_stage(p: Plan, experiment: str, seed: int) -> str:
    cfg = p.cfg
    name = f"rft-s{seed}"
    run_dir = p.out / "train" / name
    config = p.out / "configs" / f"{name}.yaml"

    def write_config() -> None:
        _write_yaml(
            config,
            {
                "inherit": str(recipe_path("tiny-rft.yaml")),
                "model": {"path": str(p.model("sft"))},
                "data": {"datasets": [{"path": str(p.data), "split": "train"}]},
                "grpo": {"prompts_per_step": cfg.rft_prompts, "group_size": cfg.rft_group},
                "train": {
                    "max_steps": cfg.rft_steps,
                    "max_minutes": None,
                    "seed": seed,
                    **_train_threads(cfg),
                },
                "output": {"dir": str(run_dir)},
            },
        )

    def finish() -> None:  # the trainer keeps run_dir/final at its last checkpoint
        final = p.model(name)
        final.unlink(missing_ok=True)
        final.symlink_to((run_dir / "final").resolve())

    per_step = COSTS["rft_completion"] * cfg.rft_prompts * cfg.rft_group
    p.add(
        experiment,
        Stage(
            name,
            f"RFT {cfg.rft_steps} steps from the SFT model, seed {seed}",
            ["train", "rft", "--config", str(config)],
            [p.model(name) / "autovla.json"],
            prepare=write_config,
            finish=finish,
            meta={"estimate": COSTS["sft_start"] + per_step * cfg.rft_steps},
        ),
    )
    return name


def eval_stage(
    p: Plan,
    experiment: str,
    name: str,
    model: str,
    describe: str,
    mode: str = "auto",
    num_samples: int = 1,
    batch_size: int = 8,
    limit: int | None = None,
) -> str:
    """Open-loop evaluation of a model on the evaluation split (--action-choice expected:
    the tiny recipe trains soft action targets; no effect on waypoint models)."""
    cfg = p.cfg
    limit = limit or cfg.eval_limit
    n = _samples_estimate(replace(cfg, eval_limit=limit), p.split)
    if batch_size == 1:
        per = COSTS["eval_sample_batch1"]
    elif num_samples > 1:
        per = COSTS["eval_candidate"] * num_samples
    elif mode == "slow":
        per = COSTS["eval_sample_slow"]
    elif mode == "fast":
        per = COSTS["eval_sample_fast"]
    elif model.startswith("sft-waypoints"):
        per = COSTS["eval_sample_waypoints"]
    else:
        per = COSTS["eval_sample"]
    p.add(
        experiment,
        Stage(
            name,
            f"open loop on {p.split}: {describe}",
            [
                "eval",
                "open-loop",
                "--data",
                str(p.data),
                "--split",
                p.split,
                "--model",
                str(p.model(model)),
                "--mode",
                mode,
                "--action-choice",
                "expected",
                "--num-samples",
                str(num_samples),
                "--batch-size",
                str(batch_size),
                "--seed",
                str(cfg.seed),
                *(["--limit", str(limit)] if limit else []),
                "--out",
                str(p.run(name)),
                "--overwrite",
            ],
            [p.run(name) / "results.json"],
            prepare=_threads(cfg.eval_threads),
            meta={"estimate": COSTS["eval_start"] + per * n},
        ),
    )
    return name


def compare_stage(p: Plan, experiment: str, name: str, runs: list[str]) -> str:
    out = p.run(name).with_suffix(".json")
    p.add(
        experiment,
        Stage(
            name,
            f"paired bootstrap: {' vs '.join(runs)}",
            [
                "eval",
                "compare",
                *[str(p.run(r)) for r in runs],
                "--seed",
                str(p.cfg.seed),
                "--out",
                str(out),
            ],
            [out],
            meta={"estimate": 3.0},
        ),
    )
    return name


def scaling_subset(p: Plan, fraction: float) -> Path:
    return p.data / f"scaling-{fraction:g}.jsonl"  # not manifest*.jsonl: not part of data/


def write_subset(p: Plan, fraction: float):
    """A manifest of the training samples of a seeded random `fraction` of the training
    scenes (nested: a quarter is part of the half), beside the data so image paths resolve."""

    def write() -> None:
        import numpy as np

        from autovla.data.manifest import iter_samples, write_manifest

        train = list(iter_samples(p.data, "train"))
        scenes = sorted({s.meta.get("scene", s.id) for s in train})
        order = np.random.default_rng(p.cfg.seed).permutation(len(scenes))
        keep = {scenes[i] for i in order[: max(1, round(fraction * len(scenes)))]}
        write_manifest(
            scaling_subset(p, fraction), [s for s in train if s.meta.get("scene", s.id) in keep]
        )

    return write


def build_plan(out: Path, cfg: Settings, split: str, only: list[str]) -> Plan:
    p = Plan(out, cfg, split)
    for exp in only:
        shared_stages(p, exp)
        if exp == "rft":
            runs = ["eval-sft"]
            for seed in cfg.rft_seeds:
                rft_stage(p, exp, seed)
                runs.append(
                    eval_stage(p, exp, f"eval-rft-s{seed}", f"rft-s{seed}", f"RFT seed {seed}")
                )
            compare_stage(p, exp, "compare-rft", runs)
        elif exp == "waypoints":
            init_stage(p, exp, "init-waypoints", "autovla-waypoints-v1")
            sft_stage(p, exp, "sft-waypoints", "init-waypoints", "dual thinking, text waypoints")
            eval_stage(p, exp, "eval-sft-waypoints", "sft-waypoints", "text waypoints")
            compare_stage(p, exp, "compare-waypoints", ["eval-sft", "eval-sft-waypoints"])
            for model in ("sft", "sft-waypoints"):
                eval_stage(
                    p,
                    exp,
                    f"time-{model}",
                    model,
                    f"planning time of {model}",
                    batch_size=1,
                    limit=cfg.runtime_limit,
                )
        elif exp == "reasoning":
            sft_stage(
                p,
                exp,
                "sft-action-only",
                "init-tokens",
                "action only (no reasoning)",
                variant="action_only",
            )
            eval_stage(
                p, exp, "eval-action-only", "sft-action-only", "action-only SFT", mode="fast"
            )
            for mode in ("fast", "slow"):
                eval_stage(p, exp, f"eval-sft-{mode}", "sft", f"SFT forced {mode}", mode=mode)
            compare_stage(
                p,
                exp,
                "compare-reasoning",
                ["eval-sft", "eval-action-only", "eval-sft-fast", "eval-sft-slow"],
            )
        elif exp == "scaling":
            runs = ["eval-sft"]
            for frac in cfg.scaling:
                name = f"sft-scenes-{frac:g}"
                sft_stage(
                    p,
                    exp,
                    name,
                    "init-tokens",
                    f"{frac:g} of the training scenes",
                    train_data=scaling_subset(p, frac),
                    prepare=write_subset(p, frac),
                )
                runs.append(eval_stage(p, exp, f"eval-{name}", name, f"{frac:g} of the scenes"))
            compare_stage(p, exp, "compare-scaling", runs)
        elif exp == "best-of-n":
            rft = rft_stage(p, exp, cfg.rft_seeds[0])
            k = max(cfg.best_of_n)
            for model in ("sft", rft):
                eval_stage(
                    p,
                    exp,
                    f"eval-{model}-n{k}",
                    model,
                    f"{k} sampled plans per scene ({model})",
                    num_samples=k,
                )
                eval_stage(
                    p,
                    exp,
                    f"time-{model}",
                    model,
                    f"planning time of {model}",
                    batch_size=1,
                    limit=cfg.runtime_limit,
                )
            eval_stage(p, exp, f"eval-{rft}", rft, f"RFT seed {cfg.rft_seeds[0]}")
        else:
            raise ValueError(f"unknown experiment {exp!r}; valid: {', '.join(EXPERIMENTS)}")
    return p


# --- tables --------------------------------------------------------------------------------------
def _load(p: Plan, name: str) -> tuple[dict, list[dict]] | None:
    run = p.run(name)
    if not (run / "results.json").is_file():
        return None
    from autovla.eval.open_loop import read_rows

    return json.loads((run / "results.json").read_text()), read_rows(run)


def _compare(p: Plan, name: str) -> dict | None:
    f = p.run(name).with_suffix(".json")
    return json.loads(f.read_text()) if f.is_file() else None


def _f(v, digits: int = 3, scale: float = 1.0) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def _pdms(v) -> str:
    return _f(v, 1, 100.0)


def _ci(cmp: dict | None, run: str, key: str = "pdms", scale: float = 100.0) -> str:
    """'+d (lo .. hi)' of `run` minus the comparison's base, from `eval compare`."""
    for d in (cmp or {}).get("diffs", {}).get(key, []):
        if d["run"] == run:
            digits = 1 if scale == 100.0 else 3
            return (
                f"{d['diff'] * scale:+.{digits}f} ({d['low'] * scale:+.{digits}f} .. "
                f"{d['high'] * scale:+.{digits}f})"
            )
    return "-"


def reasoning_by_complexity(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per complexity: plans, slow share, mean reasoning characters per plan (0 for fast
    answers) and per slow plan."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("valid") and r.get("mode") is not None:
            c = r.get("complex")
            groups["unknown" if c is None else ("complex" if c else "straightforward")].append(r)
    out = {}
    for c, rs in groups.items():
        slow = [r for r in rs if r["mode"] == "slow"]
        out[c] = {
            "n": len(rs),
            "slow_share": len(slow) / len(rs),
            "chars_per_plan": sum(r.get("reasoning_chars", 0) for r in rs) / len(rs),
            "chars_per_slow": (sum(r.get("reasoning_chars", 0) for r in slow) / len(slow))
            if slow
            else 0.0,
        }
    return out


def _by_complexity(results: dict, key: str, which: str) -> float | None:
    return results.get("by_complexity", {}).get(which, {}).get(key)


def _l2(o: dict, conv: str) -> str:
    return " / ".join(_f(o.get(f"l2_{conv}_{t}s"), 2) for t in (1, 2, 3))


def _latency(rows: list[dict], mode: str = "all") -> float | None:
    """Mean planning time per plan of a batch-1 run, without its first plan (a warm-up that
    pays one-time costs), over all plans or those of one mode."""
    times = [
        r["latency"]
        for r in rows[1:]
        if r.get("valid") and r.get("latency") is not None and mode in ("all", r.get("mode"))
    ]
    return sum(times) / len(times) if times else None


def table_rft(p: Plan) -> list[str]:
    cv = _load(p, "eval-cv")
    cmp = _compare(p, "compare-rft")
    lines = [
        "| model | PDMS | Δ PDMS vs SFT (95 % CI) | PDMS complex / straightf. | L2 avg (m) | "
        "slow share complex / straightf. | reasoning chars per plan complex / straightf. |",
        "|---|---|---|---|---|---|---|",
    ]
    if cv:
        o = cv[0]["overall"]
        lines.append(
            f"| constant velocity | {_pdms(o.get('pdms'))} | - | "
            f"{_pdms(_by_complexity(cv[0], 'pdms', 'complex'))} / "
            f"{_pdms(_by_complexity(cv[0], 'pdms', 'straightforward'))} | "
            f"{_f(o.get('l2_avg'))} | - | - |"
        )
    base = None
    for name, label in [
        ("eval-sft", "SFT"),
        *[(f"eval-rft-s{s}", f"RFT seed {s}") for s in p.cfg.rft_seeds],
    ]:
        run = _load(p, name)
        if run is None:
            lines.append(f"| {label} | not run | | | | | |")
            continue
        res, rows = run
        o, rc = res["overall"], reasoning_by_complexity(rows)
        cx, st = rc.get("complex", {}), rc.get("straightforward", {})
        chars = f"{_f(cx.get('chars_per_plan'), 0)} / {_f(st.get('chars_per_plan'), 0)}"
        if name == "eval-sft":
            base = st.get("chars_per_plan")
        elif base:
            chars += f" ({100 * (st.get('chars_per_plan', 0) / base - 1):+.0f} % straightf.)"
        lines.append(
            f"| {label} | {_pdms(o.get('pdms'))} | "
            f"{'-' if name == 'eval-sft' else _ci(cmp, name)} | "
            f"{_pdms(_by_complexity(res, 'pdms', 'complex'))} / "
            f"{_pdms(_by_complexity(res, 'pdms', 'straightforward'))} | {_f(o.get('l2_avg'))} | "
            f"{_f(cx.get('slow_share'), 2)} / {_f(st.get('slow_share'), 2)} | {chars} |"
        )
    lines += [
        "",
        "Paper (NAVSIM navtest, docs/method.md section 8): SFT 80.54 -> RFT 89.11 PDMS "
        "(+8.57); RFT shortens the reasoning on straightforward scenes.",
    ]
    return lines


def table_waypoints(p: Plan) -> list[str]:
    cmp = _compare(p, "compare-waypoints")
    lines = [
        "| answer | PDMS | Δ PDMS vs tokens (95 % CI) | L2 1/2/3 s ST-P3 (m) | L2 1/2/3 s UniAD "
        "(m) | L2 avg | parse failures | planning time per plan (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ev, time_run, label in (
        ("eval-sft", "time-sft", "action tokens"),
        ("eval-sft-waypoints", "time-sft-waypoints", "text waypoints"),
    ):
        run, timed = _load(p, ev), _load(p, time_run)
        if run is None:
            lines.append(f"| {label} | not run | | | | | | |")
            continue
        o = run[0]["overall"]
        fails = o.get("n_parse_failures")
        failures = "-" if fails is None else f"{fails} of {o['n_valid']}"
        lines.append(
            f"| {label} | {_pdms(o.get('pdms'))} | "
            f"{'-' if ev == 'eval-sft' else _ci(cmp, ev)} | {_l2(o, 'stp3')} | {_l2(o, 'uniad')} "
            f"| {_f(o.get('l2_avg'))} | {failures} | "
            f"{_f(_latency(timed[1]) if timed else None, 3)} |"
        )
    lines += [
        "",
        "Paper (NAVSIM navtest, docs/method.md section 8): action tokens 80.54 vs text "
        "waypoints 71.31 PDMS; planning time 3.95 s vs 7.65 s. A waypoint answer that does not "
        "parse is planned as standing still and scored (never dropped).",
    ]
    return lines


def table_reasoning(p: Plan) -> list[str]:
    cmp = _compare(p, "compare-reasoning")
    lines = [
        "| model / mode | PDMS | Δ PDMS vs dual auto (95 % CI) | PDMS complex | PDMS straightf. "
        "| L2 avg complex / straightf. (m) | L2 1/2/3 s ST-P3 | slow share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("eval-action-only", "action-only SFT (fast)"),
        ("eval-sft", "dual SFT, auto"),
        ("eval-sft-fast", "dual SFT, forced fast"),
        ("eval-sft-slow", "dual SFT, forced slow"),
    ):
        run = _load(p, name)
        if run is None:
            lines.append(f"| {label} | not run | | | | | | |")
            continue
        res, rows = run
        o = res["overall"]
        slow = sum(r.get("mode") == "slow" for r in rows if r.get("valid")) / max(o["n_valid"], 1)
        lines.append(
            f"| {label} | {_pdms(o.get('pdms'))} | "
            f"{'-' if name == 'eval-sft' else _ci(cmp, name)} | "
            f"{_pdms(_by_complexity(res, 'pdms', 'complex'))} | "
            f"{_pdms(_by_complexity(res, 'pdms', 'straightforward'))} | "
            f"{_f(_by_complexity(res, 'l2_avg', 'complex'))} / "
            f"{_f(_by_complexity(res, 'l2_avg', 'straightforward'))} | {_l2(o, 'stp3')} | "
            f"{slow:.2f} |"
        )
    auto = _load(p, "eval-sft")
    if auto:
        by_type: dict[str, list[bool]] = defaultdict(list)
        complex_of: dict[str, bool | None] = {}
        for r in auto[1]:
            if r.get("valid"):
                t = r.get("scenario_type") or "unknown"
                by_type[t].append(r.get("mode") == "slow")
                complex_of[t] = r.get("complex")
        lines += [
            "",
            "Slow-thinking share of the dual SFT model (auto) by scenario type:",
            "",
            "| scenario type | complex | plans | slow share |",
            "|---|---|---|---|",
        ]
        for t in sorted(by_type, key=lambda t: (not complex_of[t], t)):
            v = by_type[t]
            lines.append(f"| {t} | {complex_of[t]} | {len(v)} | {sum(v) / len(v):.2f} |")
    lines += [
        "",
        "Paper (docs/method.md section 8): nuScenes L2 1/2/3 s (ST-P3) action only 0.22 / 0.39 "
        "/ 0.61 (avg 0.41), with reasoning 0.21 / 0.38 / 0.60 (avg 0.40); planning time fast "
        "1.07 s, slow 10.5 s.",
    ]
    return lines


def table_scaling(p: Plan) -> list[str]:
    cmp = _compare(p, "compare-scaling")
    lines = [
        "| training scenes | train samples | SFT steps | PDMS | Δ PDMS vs all (95 % CI) | "
        "L2 avg (m) | Δ L2 avg vs all (95 % CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for frac in (*p.cfg.scaling, 1.0):
        name = "eval-sft" if frac == 1.0 else f"eval-sft-scenes-{frac:g}"
        subset = scaling_subset(p, frac)
        samples = "-"
        if frac == 1.0 and (p.data / "dataset.json").is_file():
            from autovla.data.manifest import iter_samples

            samples = str(sum(1 for _ in iter_samples(p.data, "train")))
        elif subset.is_file():
            samples = str(sum(1 for line in subset.read_text().splitlines() if line.strip()))
        run = _load(p, name)
        if run is None:
            lines.append(f"| {frac:g} | {samples} | {p.cfg.sft_steps} | not run | | | |")
            continue
        o = run[0]["overall"]
        base = name == "eval-sft"
        lines.append(
            f"| {'all' if base else f'{frac:g}'} | {samples} | {p.cfg.sft_steps} | "
            f"{_pdms(o.get('pdms'))} | {'-' if base else _ci(cmp, name)} | "
            f"{_f(o.get('l2_avg'))} | {'-' if base else _ci(cmp, name, 'l2_avg', 1.0)} |"
        )
    lines += [
        "",
        "Paper: performance grows with the amount of training data; docs/method.md section 8 "
        "lists no number for it.",
    ]
    return lines


def table_best_of_n(p: Plan) -> list[str]:
    from autovla.eval.best_of_n import best_of_n

    rft = f"rft-s{p.cfg.rft_seeds[0]}"
    k = max(p.cfg.best_of_n)
    lines = [
        "| model | greedy PDMS | " + " | ".join(f"best of {n}" for n in p.cfg.best_of_n) + " |",
        "|---|---|" + "---|" * len(p.cfg.best_of_n),
    ]
    for model, label in (("sft", "SFT"), (rft, f"RFT seed {p.cfg.rft_seeds[0]}")):
        greedy, sampled = _load(p, f"eval-{model}"), _load(p, f"eval-{model}-n{k}")
        if sampled is None:
            lines.append(f"| {label} | not run |" + " |" * len(p.cfg.best_of_n))
            continue
        best = best_of_n(sampled[1], p.cfg.best_of_n)
        g = _pdms(greedy[0]["overall"].get("pdms")) if greedy else "-"
        lines.append(
            f"| {label} | {g} | "
            + " | ".join(_pdms(best[n]["pdms"]) for n in p.cfg.best_of_n)
            + " |"
        )
    lines += [
        "",
        f"Best of N: {k} plans sampled per scene (temperature 1); for each N the scorer keeps "
        "the best of the first N (an oracle: it reads the ground truth).",
        "",
        "| model | planning time per plan (s) | fast / slow (s) | slow share | change vs SFT |",
        "|---|---|---|---|---|",
    ]
    base = None
    for model, label in (("sft", "SFT"), (rft, f"RFT seed {p.cfg.rft_seeds[0]}")):
        timed = _load(p, f"time-{model}")
        if timed is None:
            lines.append(f"| {label} | not run | | | |")
            continue
        rows = timed[1]
        mean = _latency(rows)
        slow = sum(r.get("mode") == "slow" for r in rows if r.get("valid")) / max(len(rows), 1)
        change = "-"
        if model == "sft":
            base = mean
        elif base and mean is not None:
            change = f"{100 * (mean / base - 1):+.1f} %"
        lines.append(
            f"| {label} | {_f(mean)} | {_f(_latency(rows, 'fast'))} / "
            f"{_f(_latency(rows, 'slow'))} | {slow:.2f} | {change} |"
        )
    lines += [
        "",
        f"Planning time: the first {p.cfg.runtime_limit} {p.split} samples planned one at a time "
        f"(batch 1, {p.cfg.eval_threads} torch threads, mode auto, greedy), the first plan not "
        "counted (warm-up).",
        "",
        "Paper (docs/method.md section 8): RFT 89.11, best of 6 samples 92.12 PDMS; RFT cut the "
        "average planning time by 66.8 %.",
    ]
    return lines


TABLES = {
    "rft": ("RFT over SFT", table_rft),
    "waypoints": ("Action tokens vs text waypoints", table_waypoints),
    "reasoning": ("Reasoning: action-only vs dual thinking, forced modes", table_reasoning),
    "scaling": ("Data scaling at equal steps", table_scaling),
    "best-of-n": ("Best of N and planning time", table_best_of_n),
}


# --- the report ----------------------------------------------------------------------------------
def machine() -> str:
    import torch

    load = f", load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"{platform.machine()}, {os.cpu_count()} cores{load}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}"
    )


def commit() -> str:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = r.stdout.strip() or "unknown"
    return sha + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


CARRIED = "Carried over from the earlier version of this page"
NO_RUNS = "No runs of this experiment in this output folder."
LEGACY_NO_RUNS = "Not run in this invocation (tables below come from earlier runs"  # older pages


@dataclass
class EarlierPage:
    """What a rewrite keeps of the results page it replaces: the sections that hold runs of
    their experiment (by experiment) and the header bullets that say how they were made."""

    sections: dict[str, list[str]] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)


def _earlier_page(path: Path) -> EarlierPage:
    page = EarlierPage()
    if not path.is_file():
        return page
    bodies: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("## "):  # a heading of another kind ends the section before it
            m = re.fullmatch(r"## .* \(`--only ([\w-]+)`\)", line)
            current = bodies.setdefault(m.group(1), []) if m else None
        elif current is not None:
            current.append(line)
        elif line.startswith("* ") and not bodies:
            page.header.append(line)
    for exp, body in bodies.items():
        if not any(line.startswith((NO_RUNS, LEGACY_NO_RUNS)) for line in body):
            page.sections[exp] = body
    return page


def _own_stages(p: Plan, exp: str) -> list[Stage]:
    """The evaluations that belong to this experiment alone (not the SFT model's evaluation
    that every experiment compares with, nor the RFT model best-of-n borrows)."""
    full = build_plan(p.out, p.cfg, p.split, list(EXPERIMENTS))
    owners = defaultdict(set)
    for name_of_exp, names in full.experiments.items():
        for n in names:
            owners[n].add(name_of_exp)
    return [
        full.stages[n]
        for n in full.experiments[exp]
        if owners[n] == {exp} and full.stages[n].args[:1] == ["eval"]
    ]


def _has_results(p: Plan, exp: str) -> bool:
    """Whether this output folder holds a finished evaluation of the experiment's own."""
    return any(st.outputs and all(o.exists() for o in st.outputs) for st in _own_stages(p, exp))


def _carried(body: list[str], header: list[str]) -> list[str]:
    """A section of the earlier page, under the header lines of the invocation that made it
    (a section carried before already has them)."""
    while body and not body[-1].strip():
        body = body[:-1]
    if any(line.startswith(CARRIED) for line in body):
        return [*body, ""]
    made_with = [f"  {line}" for line in header if not line.startswith("* wall time")]
    return [
        f"{CARRIED}: these runs are not in this invocation's output folder. They were made with:",
        "",
        *made_with,
        "",
        *body,
        "",
    ]


def write_results(
    p: Plan, path: Path, command: str, state: dict, wall: str, note: str | None = None
) -> Path:
    """docs/results.md (or `path`): one section per experiment, its table beside the paper's
    numbers, with the command, commit, machine and stage times."""
    cfg = p.cfg
    lines = [
        "# Reproducing the paper's claims in miniature",
        "",
        "Generated by `benchmarks/reproduce.py` (do not edit by hand; rerun it). Embedded world, "
        f"tiny preset, **{p.split}** split. PDMS x 100 (NAVSIM-style scorer of the embedded "
        "world); L2 in metres at 1/2/3 s, ST-P3 (mean over the steps up to t) and UniAD (at t) "
        "conventions; intervals are paired 95 % bootstrap intervals from `autovla eval compare` "
        "over the samples both runs scored.",
        "",
        f"* command: `{command}`",
        f"* commit: {commit()}",
        f"* machine: {machine()}",
        f"* settings: {cfg.label}, {p.split} split: {cfg.scenes} scenes (seed {cfg.seed}), "
        f"codebook K <= {cfg.codebook_size}, SFT {cfg.sft_steps} steps x {cfg.sft_batch} "
        f"samples, RFT {cfg.rft_steps} steps x {cfg.rft_prompts} prompts x {cfg.rft_group} "
        f"completions, seeds {list(cfg.rft_seeds)}, evaluation "
        f"{'all samples' if cfg.eval_limit is None else f'first {cfg.eval_limit} samples'}, "
        f"torch threads: training "
        f"{'the recipes' if cfg.train_threads is None else cfg.train_threads}, evaluation "
        f"{cfg.eval_threads}",
        "* recipes: configs/tiny-sft.yaml and configs/tiny-rft.yaml (step counts above, no time "
        "budget); greedy planning with `--action-choice expected` unless stated",
        f"* wall time of this invocation: {wall}",
        *([f"* note: {note}"] if note else []),
        "",
    ]
    earlier = _earlier_page(path)
    for exp, (title, fn) in TABLES.items():
        lines += [f"## {title} (`--only {exp}`)", ""]
        names = [n for n in p.experiments.get(exp, [])]
        own = bool(names) or _has_results(p, exp)
        if not own and exp in earlier.sections:
            lines += _carried(earlier.sections[exp], earlier.header)
            continue
        if not names:
            lines += [
                "Not run in this invocation: the table comes from earlier runs in the same "
                "output folder."
                if own
                else NO_RUNS,
                "",
            ]
        lines += fn(p)
        done = [n for n in names if n in state]
        if done:
            times = ", ".join(f"{n} {stage_seconds(state[n])}" for n in done)
            lines += ["", f"Stage times (s): {times}"]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        f.write("\n".join(lines))
    return path


# --- main ----------------------------------------------------------------------------------------
def _minutes(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def is_done(stage: Stage, state: dict) -> bool:
    """As `run_stages` decides: recorded as finished, and its outputs are there."""
    return stage.name in state and all(path.exists() for path in stage.outputs)


def expected(p: Plan, state: dict) -> tuple[list[str], float]:
    """Lines with the expected wall time of each experiment's stages still to run."""
    lines, counted, total = [], set(), 0.0
    for exp, names in p.experiments.items():
        todo = [n for n in names if n not in counted and not is_done(p.stages[n], state)]
        secs = sum(p.stages[n].meta.get("estimate", 0.0) for n in todo)
        counted.update(names)
        total += secs
        lines.append(
            f"  {exp:<10} {len(todo):>2} stages to run, ~{_minutes(secs)}"
            + (" (includes the shared data and SFT model)" if "sft" in todo else "")
        )
    return lines, total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only",
        action="append",
        choices=EXPERIMENTS,
        help="run this experiment (repeat for more); default: all",
    )
    ap.add_argument("--quick", action="store_true", help="tiny data and steps (smoke run)")
    ap.add_argument("--out", type=Path, help="working folder (default runs/reproduce[-quick])")
    ap.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="evaluation split: test for the tables, val for choosing recipes",
    )
    ap.add_argument(
        "--results",
        type=Path,
        help="markdown file to write (default docs/results.md for a full test run, "
        "else OUT/results-SPLIT.md)",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the stages and expected time")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads of every training and evaluation stage (default: each recipe's own, "
        "tiny-sft 2 and tiny-rft 1, and 2 for evaluation); 1 when other jobs share the cores, "
        "where 2 threads per process fight over them (docs/training.md)",
    )
    ap.add_argument(
        "--note",
        help="a line for the results page: how the runs were made when not in one invocation "
        "(resumed, stages run by hand), or what the numbers mean against the targets",
    )
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be at least 1, got {args.threads}")
        cfg = replace(cfg, train_threads=args.threads, eval_threads=args.threads)
    out = args.out or ROOT / "runs" / ("reproduce-quick" if args.quick else "reproduce")
    out = out.resolve()
    only = list(dict.fromkeys(args.only or EXPERIMENTS))
    p = build_plan(out, cfg, args.split, only)
    state_file = out / STATE_FILE
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if state.get("_settings") not in (None, cfg.label):
        print(
            f"{out} holds a '{state['_settings']}' reproduction; use another --out", file=sys.stderr
        )
        return 1
    ran_with = state.get("_threads", args.threads)
    if ran_with != args.threads and any(not k.startswith("_") for k in state):
        # the page states one thread count, and planning times depend on it
        said = "without --threads" if ran_with is None else f"with --threads {ran_with}"
        print(f"{out} ran {said}; rerun the same way, or use another --out", file=sys.stderr)
        return 1
    lines, total = expected(p, state)
    print(
        f"reproduce ({cfg.label}) in {out}; expected wall time on the 2-core machine "
        f"~{_minutes(total)} (per-unit costs: {COSTS_MEASURED}):"
    )
    print("\n".join(lines))
    if args.dry_run:
        for name, st in p.stages.items():
            print(
                f"  {name:<24} ~{_minutes(st.meta.get('estimate', 0)):>7}  autovla "
                f"{shlex.join(st.args)}"
            )
        return 0
    out.mkdir(parents=True, exist_ok=True)
    state["_settings"] = cfg.label
    state["_threads"] = args.threads
    t0 = dt.datetime.now()
    try:
        run_stages(list(p.stages.values()), state_file, state)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    wall = _minutes((dt.datetime.now() - t0).total_seconds())
    results = args.results or (
        ROOT / "docs" / "results.md"
        if not args.quick and args.split == "test"
        else out / f"results-{args.split}.md"
    )
    command = "python benchmarks/reproduce.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    path = write_results(p, results, command.strip(), state, wall, args.note)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
