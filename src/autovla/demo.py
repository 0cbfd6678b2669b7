"""`autovla demo`: the whole pipeline on the embedded world, as the commands a user would type.

Each stage is one `autovla ...` command run in this process (so torch is imported once);
the command line is printed before it runs, so the demo doubles as a tutorial. A stage that
finished is recorded in `OUT/stages.json` and skipped on the next run (`--fresh` redoes
everything); an interrupted stage resumes through its command's own resume (training
restarts from its last checkpoint).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import Field

from autovla.config import StrictModel, recipe_path
from autovla.io import atomic_open, write_json

STATE_FILE = "stages.json"
PARTIAL = "_unfinished_seconds"  # stage -> seconds of its invocations that did not finish


class DemoError(RuntimeError):
    """A demo stage that failed (its own error was printed above); rerunning resumes."""


class DemoConfig(StrictModel):
    """Sizes of one demo run; `quick` is a smoke run that fits in a few minutes."""

    label: str = "full"
    scenes: int = Field(default=600, ge=10, description="embedded-world scenarios to generate")
    workers: int = Field(default=2, ge=1)
    codebook_size: int = Field(default=2048, ge=16)
    sft_steps: int = Field(default=3000, ge=1)  # configs/tiny-sft.yaml's max_steps
    sft_batch: int = Field(default=8, ge=1)
    sft_max_minutes: float | None = Field(
        default=None, gt=0, description="time budget of SFT (None: run every step)"
    )
    rft_steps: int = Field(default=100, ge=1)
    rft_prompts: int = Field(default=2, ge=1, description="prompts per RFT step")
    rft_group: int = Field(default=8, ge=2, description="completions per prompt (G)")
    rft_max_minutes: float | None = Field(
        default=None, gt=0, description="time budget of RFT (None: run every step)"
    )
    eval_limit: int | None = Field(default=None, ge=1, description="open-loop test samples")
    closed_loop_scenarios: int = Field(default=20, ge=1)
    seed: int = 0


PRESETS: dict[str, DemoConfig] = {
    "full": DemoConfig(),
    "quick": DemoConfig(
        label="quick (smoke run: numbers mean little)",
        scenes=48,
        codebook_size=512,
        sft_steps=30,
        sft_batch=4,
        rft_steps=3,
        rft_prompts=1,
        rft_group=4,
        eval_limit=12,
        closed_loop_scenarios=3,
    ),
}


@dataclass
class Stage:
    name: str
    describe: str
    args: list[str]  # the autovla command line
    outputs: list[Path]  # present when the stage has finished
    prepare: Callable[[], None] | None = None  # writes configs the command reads
    finish: Callable[[], None] | None = None  # runs after the command succeeded
    meta: dict = field(default_factory=dict)


def _write_yaml(path: Path, data: dict) -> None:
    with atomic_open(path) as f:
        yaml.safe_dump(data, f, sort_keys=False)


def build_stages(out: Path, cfg: DemoConfig) -> list[Stage]:
    """The pipeline, in order; paths all under `out`."""
    data = out / "data"
    codebook = out / "codebook.safetensors"
    sft_dir, rft_dir = out / "sft", out / "rft"
    # the trainer keeps <output.dir>/final pointing at its last checkpoint
    sft_model, rft_model = sft_dir / "final", rft_dir / "final"
    runs = out / "runs"
    cfg_dir = out / "configs"

    def write_sft_config() -> None:
        _write_yaml(
            cfg_dir / "sft.yaml",
            {
                "inherit": str(recipe_path("tiny-sft.yaml")),
                "model": {"preset": "tiny", "codebook": str(codebook), "seed": cfg.seed},
                "data": {"datasets": [{"path": str(data), "split": "train", "weight": 1.0}]},
                "val": {"datasets": [{"path": str(data), "split": "val"}]},
                "sft": {"batch_size": cfg.sft_batch},
                # by step count: a budget that cuts the stage short is reported as such
                "train": {"max_steps": cfg.sft_steps, "max_minutes": cfg.sft_max_minutes},
                "output": {"dir": str(sft_dir)},
            },
        )

    def write_rft_config() -> None:
        _write_yaml(
            cfg_dir / "rft.yaml",
            {
                "inherit": str(recipe_path("tiny-rft.yaml")),
                "model": {"path": str(sft_model)},
                "data": {"datasets": [{"path": str(data), "split": "train", "weight": 1.0}]},
                "train": {"max_steps": cfg.rft_steps, "max_minutes": cfg.rft_max_minutes},
                "grpo": {"group_size": cfg.rft_group, "prompts_per_step": cfg.rft_prompts},
                "output": {"dir": str(rft_dir)},
            },
        )

    limit = ["--limit", str(cfg.eval_limit)] if cfg.eval_limit else []
    stages = [
        Stage(
            "data",
            "generate embedded-world scenarios (3 cameras x 4 frames, expert futures)",
            [
                "sim",
                "generate",
                "--out",
                str(data),
                "--scenes",
                str(cfg.scenes),
                "--seed",
                str(cfg.seed),
                "--workers",
                str(cfg.workers),
            ],
            [data / "dataset.json"],
        ),
        Stage(
            "codebook",
            "fit the K-disk action codebook on the trajectories",
            [
                "codebook",
                "fit",
                "--data",
                str(data),
                "--split",
                "train",  # the test split must not shape the tokens it is scored with
                "--size",
                str(cfg.codebook_size),
                "--seed",
                str(cfg.seed),
                "--allow-fewer",
                "--out",
                str(codebook),
            ],
            [codebook],
        ),
        Stage(
            "reasoning",
            "write chains of thought for the complex scenes from their scene facts",
            ["annotate", "rules", str(data), "--seed", str(cfg.seed)],
            [],
        ),
        Stage(
            "sft",
            "supervised fine-tuning of a tiny Qwen2.5-VL on fast and slow answers",
            ["train", "sft", "--config", str(cfg_dir / "sft.yaml")],
            [sft_model],
            prepare=write_sft_config,
        ),
        Stage(
            "rft",
            "GRPO reinforcement fine-tuning with the PDMS reward and the reasoning penalty",
            ["train", "rft", "--config", str(cfg_dir / "rft.yaml")],
            [rft_model],
            prepare=write_rft_config,
        ),
    ]
    planners = {
        "constant-velocity": ["--baseline", "constant-velocity"],
        # the tiny recipe trains soft action targets: plan with the mean motion (planner docs)
        "sft": ["--model", str(sft_model), "--action-choice", "expected"],
        "rft": ["--model", str(rft_model), "--action-choice", "expected"],
        "expert": ["--baseline", "expert"],
    }
    for name, how in planners.items():
        run = runs / f"open-loop-{name}"
        stages.append(
            Stage(
                f"open-loop:{name}",
                f"open-loop evaluation of {name} on the test split",
                [
                    "eval",
                    "open-loop",
                    "--data",
                    str(data),
                    "--split",
                    "test",
                    *how,
                    *limit,
                    "--out",
                    str(run),
                    "--overwrite",
                ],
                [run / "results.json"],
                meta={"planner": name, "kind": "open"},
            )
        )
    for name, how in planners.items():
        run = runs / f"closed-loop-{name}"
        stages.append(
            Stage(
                f"closed-loop:{name}",
                f"closed-loop driving of {name} in the embedded world",
                [
                    "eval",
                    "closed-loop",
                    *how,
                    "--scenarios",
                    str(cfg.closed_loop_scenarios),
                    "--seed",
                    str(cfg.seed + 1000),
                    "--out",
                    str(run),
                    "--overwrite",
                ],
                [run / "results.json"],
                meta={"planner": name, "kind": "closed"},
            )
        )
    return stages


def _load_state(out: Path) -> dict:
    path = out / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def run_demo(out: Path, preset: str = "full", fresh: bool = False, echo=print) -> Path:
    """Run (or resume) every stage; returns the path of the demo report."""
    cfg = PRESETS[preset]
    if fresh and out.exists():
        # Only what the demo itself made: the stage outputs under `out`.
        for child in (
            "data",
            "sft",
            "rft",
            "runs",
            "configs",
            STATE_FILE,
            "codebook.safetensors",
            "report.html",
            "headline.md",
        ):
            p = out / child
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out)
    if state.get("_preset") not in (None, preset):
        raise ValueError(f"{out} holds a '{state['_preset']}' demo; use another --out or --fresh")
    sizes = cfg.model_dump()
    if state.get("_config", sizes) != sizes or (state.get("_config") is None and len(state) > 1):
        # finished stages of other sizes would be skipped and reported as this run's
        raise ValueError(
            f"{out} holds a demo run with other settings (or from an older autovla); "
            "use --fresh to redo it, or another --out"
        )
    state["_preset"] = preset
    state["_config"] = sizes
    stages = build_stages(out, cfg)
    run_stages(stages, out / STATE_FILE, state, echo)
    from autovla.demo_report import headline_rows, training_lines, write_demo_report

    report = write_demo_report(out, stages, cfg)
    for line in training_lines(out):
        echo(line)
    echo("")
    echo(f"autovla demo - {cfg.label}")
    for line in headline_rows(out):
        echo(line)
    echo(f"\nthe table in Markdown: {out / 'headline.md'}")
    echo(f"report: {report}")
    return report


def run_stages(stages: list[Stage], state_file: Path, state: dict, echo=print) -> None:
    """Run each stage not yet recorded in `state` (with its outputs present), in order,
    recording it in `state_file` when it succeeded; a failed stage raises `DemoError`."""
    from autovla.cli import app

    t_start = time.perf_counter()
    for i, st in enumerate(stages, 1):
        done = st.name in state and all(p.exists() for p in st.outputs)
        head = f"[{i}/{len(stages)}] {st.name}: {st.describe}"
        if done:
            echo(f"{head} - done before ({state[st.name]['seconds']:.0f} s), skipped")
            continue
        echo(f"{head}\n  $ autovla {' '.join(st.args)}")
        if st.prepare:
            st.prepare()
        t0 = time.perf_counter()
        finished = False
        try:
            code = _invoke(app, st.args)
            if code != 0:
                raise DemoError(f"stage {st.name} failed (exit {code}); rerun to resume")
            if st.finish:
                st.finish()
            finished = True
        finally:
            seconds = time.perf_counter() - t0
            earlier = state.get(PARTIAL, {}).pop(st.name, 0.0)
            if not finished:  # failed, interrupted or raised: kept for the run that finishes
                state.setdefault(PARTIAL, {})[st.name] = round(earlier + seconds, 1)
                write_json(state_file, state)
        if PARTIAL in state and not state[PARTIAL]:
            del state[PARTIAL]
        # `seconds` is the invocation that finished; a training stage resumed from its
        # checkpoint also cost the interrupted ones (`seconds_all`), an evaluation that started
        # over did not need them
        state[st.name] = {"seconds": round(seconds, 1), "command": ["autovla", *st.args]}
        if earlier:
            state[st.name]["seconds_all"] = round(earlier + seconds, 1)
        write_json(state_file, state)
        elapsed = time.perf_counter() - t_start
        echo(f"  finished in {seconds:.0f} s (so far {elapsed / 60:.1f} min)")


def stage_seconds(entry: object) -> str:
    """A recorded stage's time as `run_stages` wrote it: the invocation that finished, and the
    total beside it when interrupted invocations came first ("-" when there is none)."""
    secs = entry.get("seconds") if isinstance(entry, dict) else None
    if not isinstance(secs, (int, float)):
        return "-"
    every = entry.get("seconds_all")
    text = f"{secs:.0f}"
    if isinstance(every, (int, float)) and every > secs:
        text += f" ({every:.0f} with interrupted runs)"
    return text


def _invoke(app, args: list[str]) -> int:
    """Run one CLI command in-process; its exit code."""
    try:
        result = app(args, standalone_mode=False)
    except SystemExit as e:  # typer.Exit inside nested calls
        return int(e.code or 0)
    return int(result or 0)
