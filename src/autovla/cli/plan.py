"""`autovla plan`: plan one sample of a dataset with a model; print it, optionally draw it."""

from __future__ import annotations

from pathlib import Path

import typer

from autovla.cli.common import (
    ACTION_CHOICE_HELP,
    DECODING_HELP,
    check_action_choice,
    check_decoding,
    console,
    fail,
    table,
)


def plan(
    model: Path = typer.Option(..., help="AutoVLA model directory."),
    data: Path = typer.Option(..., help="Dataset directory (or manifest file)."),
    index: int = typer.Option(None, help="Sample index in the manifest (default 0)."),
    sample_id: str = typer.Option(None, "--id", help="Sample id (instead of --index)."),
    split: str = typer.Option(None, help="Only samples of this split."),
    mode: str = typer.Option("auto", help="auto (the model decides), fast or slow."),
    temperature: float = typer.Option(0.0, help="0 = greedy; > 0 samples."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    action_choice: str = typer.Option("argmax", help=ACTION_CHOICE_HELP),
    decoding: str = typer.Option("auto", help=DECODING_HELP),
    seed: int = typer.Option(0, help="Sampling seed."),
    out: Path = typer.Option(
        None,
        help="Write plan_<sample id>.png (bird's-eye view and front camera) and "
        "plan_<sample id>.json here.",
    ),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)."),
) -> None:
    """Plan one sample: prints the trajectory, the mode and the reasoning."""
    import numpy as np
    import torch

    from autovla.data.manifest import dataset_root, iter_samples
    from autovla.io import write_json
    from autovla.model.backbone import quiet_transformers
    from autovla.model.checkpoint import AutoVLA
    from autovla.model.planner import Planner

    quiet_transformers()
    if mode not in ("auto", "fast", "slow"):
        raise fail(f"--mode must be auto, fast or slow, got {mode!r}")
    check_action_choice(action_choice)
    check_decoding(decoding)
    if index is not None and sample_id is not None:
        raise fail("give --index or --id, not both")
    sample = _pick(iter_samples(data, split), index or 0, sample_id)
    if sample is None:
        what = f"id {sample_id!r}" if sample_id is not None else f"index {index}"
        raise fail(f"{data}: no sample with {what}" + (f" in split {split!r}" if split else ""))
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.startswith("cuda") else None
    vla = AutoVLA.from_pretrained(model, device=dev, dtype=dtype)
    root = dataset_root(data)
    (res,) = Planner(vla, action_choice=action_choice, decoding=decoding).plan(
        [sample], root, mode=mode, temperature=temperature, top_p=top_p, seed=seed
    )
    console.print(
        f"sample {sample.id} ({sample.instruction}, {sample.ego.speed:.2f} m/s): "
        f"mode {res.mode}, {res.num_generated_tokens} tokens generated, "
        f"{1000 * res.timings['total']:.0f} ms"
    )
    truth = sample.future_array() if sample.future is not None else None
    rows = []
    for k, p in enumerate(res.trajectory):
        token = res.action_ids[k] if res.action_ids else "-"  # a waypoint format has none
        row = [f"{0.5 * (k + 1):.1f}", token, *(float(v) for v in p)]
        if truth is not None:
            row.append(float(np.hypot(*(p[:2] - truth[k, :2]))))
        rows.append(row)
    cols = ["t (s)", "token", "x", "y", "heading"] + (["error (m)"] if truth is not None else [])
    console.print(table("plan", cols, rows))
    if res.reasoning:
        console.print("reasoning:\n" + res.reasoning, highlight=False)
    if res.parse_error:
        console.print(
            f"the waypoint answer did not parse ({res.parse_error}); planned as standing still",
            highlight=False,
        )
    if out is not None:
        from autovla.model.visualize import save_plan_png
        from autovla.paths import inside, safe_name

        out.mkdir(parents=True, exist_ok=True)
        stem = safe_name(f"plan_{sample.id}")  # ids come from data: never a path out of --out
        png = save_plan_png(
            inside(out, f"{stem}.png"), sample, root, res.trajectory,
            title=f"{sample.id}: {res.mode} plan",
        )  # fmt: skip
        write_json(
            inside(out, f"{stem}.json"),
            {
                "id": sample.id,
                "mode": res.mode,
                "trajectory": res.trajectory.tolist(),
                "action_ids": res.action_ids,
                "reasoning": res.reasoning,
                "text": res.text,
                "parse_error": res.parse_error,
                "num_generated_tokens": res.num_generated_tokens,
                "timings": res.timings,
            },
        )
        typer.echo(f"wrote {png}")


def _pick(samples, index: int, sample_id: str | None):
    for i, s in enumerate(samples):
        if (sample_id is not None and s.id == sample_id) or (sample_id is None and i == index):
            return s
    return None


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
