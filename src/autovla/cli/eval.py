"""`autovla eval ...`: open-loop evaluation with reports, and comparison of runs.

Closed-loop evaluation (`eval closed-loop`) registers its command on this app too.
"""

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

app = typer.Typer(no_args_is_help=True)


def _model_plan_fn(
    model: Path, mode: str, num_samples: int, seed: int, action_choice: str, decoding: str
):
    """The model planner behind the evaluation interface."""
    from autovla.eval.planner_adapter import planner_plan_fn

    check_action_choice(action_choice)
    check_decoding(decoding)
    return planner_plan_fn(
        model,
        mode=mode,
        num_samples=num_samples,
        seed=seed,
        action_choice=action_choice,
        decoding=decoding,
    )


@app.command("open-loop")
def open_loop(
    data: Path = typer.Option(..., help="Dataset directory or manifest file."),
    out: Path = typer.Option(..., help="Run directory for results.json, samples.jsonl, report."),
    split: str = typer.Option("test", help="Split to evaluate."),
    model: Path | None = typer.Option(None, help="Model directory (the trained planner)."),
    baseline: str | None = typer.Option(
        None,
        "--baseline",
        "--planner",
        help="Built-in baseline planner: constant-velocity, pdm-closed, expert or quantized-gt.",
    ),
    codebook: Path | None = typer.Option(None, help="Codebook file (for --baseline quantized-gt)."),
    mode: str = typer.Option("auto", help="Thinking mode: auto, fast or slow (model only)."),
    action_choice: str = typer.Option("argmax", help=ACTION_CHOICE_HELP),
    decoding: str = typer.Option("auto", help=DECODING_HELP),
    num_samples: int = typer.Option(1, min=1, help="Plans sampled per scene (best-of-K)."),
    batch_size: int = typer.Option(8, min=1),
    limit: int | None = typer.Option(None, min=1, help="Evaluate only the first N samples."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, help="Write into an existing run directory."),
    report: bool = typer.Option(True, help="Also write report.html."),
    scene_filter: Path | None = typer.Option(
        None,
        "--scene-filter",
        help="Only these scenes (NAVSIM navtest style): tokens one per line, or a NAVSIM "
        "scene-filter YAML with a `tokens` list.",
    ),
) -> None:
    """Plan every sample of a split and compute L2, ADE/FDE, collisions, PDMS, RFS, latency."""
    from autovla.data.manifest import ManifestError
    from autovla.eval.baselines import make_baseline
    from autovla.eval.open_loop import run_open_loop
    from autovla.eval.report import render_report

    if (model is None) == (baseline is None):
        raise fail("give exactly one of --model DIR or --baseline NAME")
    if mode not in ("auto", "fast", "slow"):
        raise fail(f"--mode must be auto, fast or slow, got {mode!r}")
    try:
        tokens = None
        if scene_filter is not None:
            from autovla.data.scene_filter import read_scene_filter

            tokens = read_scene_filter(scene_filter)
        if baseline is not None:
            plan_fn = make_baseline(baseline, codebook)
        else:
            from autovla.model.checkpoint import CheckpointError

            try:
                plan_fn = _model_plan_fn(model, mode, num_samples, seed, action_choice, decoding)
            except CheckpointError as e:
                raise fail(str(e)) from None
        results = run_open_loop(
            plan_fn,
            data,
            split,
            out,
            overwrite=overwrite,
            batch_size=batch_size,
            limit=limit,
            planner_name=baseline or str(model),
            model_path=str(model) if model else None,
            config={
                "mode": mode,
                "action_choice": action_choice,
                "decoding": decoding,
                "num_samples": num_samples,
                "codebook": str(codebook) if codebook else None,
            },
            seed=seed,
            scene_filter=tokens,
        )
    except (FileNotFoundError, FileExistsError, ManifestError, ValueError) as e:
        raise fail(str(e)) from None
    o = results["overall"]
    if o["n_valid"] == 0:
        from autovla.eval.open_loop import read_rows

        first = next((r.get("error") for r in read_rows(out) if r.get("error")), None)
        raise fail(f"no valid plans in {out}; first error: {first}")
    sf = results.get("scene_filter")
    if sf and sf["missing"]:
        console.print(
            f"warning: {sf['missing']} of the {sf['tokens']} scenes of the filter "
            f"are not in the split (listed in {out / 'results.json'})"
        )
    if o.get("n_scoring_errors"):
        console.print(
            f"warning: {o['n_scoring_errors']} samples could not be scored "
            f"(see scoring_error in {out / 'samples.jsonl'})"
        )
    if o.get("n_parse_failures"):
        console.print(
            f"warning: {o['n_parse_failures']} waypoint answers did not parse; each was "
            f"scored as standing still (see parse_error in {out / 'samples.jsonl'})"
        )
    keys = [
        k
        for k in (
            "l2_stp3_1s",
            "l2_stp3_2s",
            "l2_stp3_3s",
            "l2_avg",
            "ade",
            "fde",
            "col_avg",
            "pdms",
            "rfs",
        )
        if k in o
    ]
    console.print(
        table(
            f"open loop: {results['planner']} on {split}",
            ["metric", "value"],
            [("samples (valid)", f"{o['n']} ({o['n_valid']})")]
            + (
                [
                    (
                        "pdms scenes (scored / failed)",
                        f"{o.get('n_pdms', 0)} / {o.get('n_scoring_errors', 0)}",
                    )
                ]
                if "pdms" in o or o.get("n_scoring_errors")
                else []
            )
            + (
                [("waypoint parse failures", str(o["n_parse_failures"]))]
                if "n_parse_failures" in o
                else []
            )
            + [(k, o[k]) for k in keys],
        )
    )
    if report:
        console.print(f"report: {render_report(out)}")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(
        ..., help="Two or more run directories; the first is the base."
    ),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    out: Path | None = typer.Option(None, help="Also write the comparison as JSON here."),
) -> None:
    """Runs side by side, differences to the first run, bootstrap CIs on PDMS and L2."""
    from autovla.eval.compare import compare_runs
    from autovla.io import write_json

    try:
        res = compare_runs(runs, seed=seed)
    except (FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    rows = []
    for k, vals in res["means"].items():
        base = vals[0]
        cells = [("-" if v is None else f"{v:.3f}") for v in vals]
        deltas = ["-" if v is None or base is None else f"{v - base:+.3f}" for v in vals[1:]]
        rows.append((k, *cells, *deltas))
    cols = ["metric", *res["names"], *[f"Δ {n}" for n in res["names"][1:]]]
    console.print(table("comparison", cols, rows))
    for k, ds in res["diffs"].items():
        for d in ds:
            console.print(
                f"{k}: {d['run']} - {d['vs']} = {d['diff']:+.4f} "
                f"(95% CI {d['low']:+.4f} .. {d['high']:+.4f}, n={d['n']})"
            )
    if out is not None:
        write_json(out, res)


@app.command("closed-loop")
def closed_loop(
    out: Path = typer.Option(..., help="Run directory for results.json, episodes, report."),
    model: Path | None = typer.Option(None, help="Model directory (the trained planner)."),
    baseline: str | None = typer.Option(
        None, help="Built-in baseline: constant-velocity or expert."
    ),
    scenarios: int = typer.Option(10, min=1, help="Episodes to drive."),
    seed: int = typer.Option(0, help="Seed of the first episode (the rest count up)."),
    types: list[str] = typer.Option([], "--types", help="Scenario types (default: all, in turn)."),
    mode: str = typer.Option("auto", help="Thinking mode: auto, fast or slow (model only)."),
    action_choice: str = typer.Option("argmax", help=ACTION_CHOICE_HELP),
    decoding: str = typer.Option("auto", help=DECODING_HELP),
    gif: list[int] = typer.Option([], "--gif", help="Save an animated GIF of episode N."),
    overwrite: bool = typer.Option(False, help="Write into an existing run directory."),
    report: bool = typer.Option(True, help="Also write report.html."),
) -> None:
    """Drive embedded-world scenarios, replanning at 2 Hz: driving score, infractions, success."""
    from autovla.eval.closed_loop import CL_KEYS, render_closed_loop_report, run_closed_loop

    if (model is None) == (baseline is None):
        raise fail("give exactly one of --model DIR or --baseline NAME")
    if baseline not in (None, "constant-velocity", "expert"):
        raise fail(f"--baseline must be constant-velocity or expert, got {baseline!r}")
    if mode not in ("auto", "fast", "slow"):
        raise fail(f"--mode must be auto, fast or slow, got {mode!r}")
    if baseline == "expert":
        plan_fn = None
    elif baseline is not None:
        from autovla.eval.baselines import make_baseline

        plan_fn = make_baseline(baseline)
    else:
        from autovla.model.checkpoint import CheckpointError

        try:
            plan_fn = _model_plan_fn(model, mode, 1, seed, action_choice, decoding)
        except CheckpointError as e:
            raise fail(str(e)) from None
    try:
        results = run_closed_loop(
            plan_fn,
            scenarios,
            seed,
            out,
            types=types or None,
            overwrite=overwrite,
            gif_episodes=tuple(gif),
            planner_name=baseline or str(model),
            model_path=str(model) if model else None,
        )
    except (FileExistsError, ValueError) as e:
        raise fail(str(e)) from None
    o = results["overall"]
    console.print(
        table(
            f"closed loop: {results['planner']}",
            ["metric", "value"],
            # the report's rows: driving score = route completion x infraction penalty, and
            # the penalty includes driving off road, which no infraction count shows
            [(k, o[k]) for k in CL_KEYS if o.get(k) is not None]
            + [(f"infractions/episode: {k}", v) for k, v in o["infractions_per_episode"].items()],
        )
    )
    if report:
        console.print(f"report: {render_closed_loop_report(out)}")
