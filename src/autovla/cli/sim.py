"""`autovla sim ...`: generate datasets, score expert plans, draw BEV views, run episodes."""

from __future__ import annotations

from pathlib import Path

import typer

from autovla.cli.common import console, fail, table

app = typer.Typer(no_args_is_help=True)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise fail(f"--image-size must look like 224x112, got {text!r}") from None
    return w, h


@app.command()
def generate(
    out: Path = typer.Option(..., help="Output dataset directory (resumes if it exists)."),
    scenes: int = typer.Option(
        110, help="Number of scenes (each gives --samples-per-scene samples)."
    ),
    seed: int = typer.Option(0, help="Master seed: same seed, same bytes."),
    workers: int = typer.Option(1, help="Worker processes."),
    types: list[str] = typer.Option(None, "--types", help="Scenario types (repeat); default all."),
    image_size: str = typer.Option("224x112", help="Camera image size WxH."),
    samples_per_scene: int = typer.Option(8, help="Samples per scene, 0.5 s apart."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    back_cameras: bool = typer.Option(False, help="Also render back, back_left, back_right."),
) -> None:
    """Roll out scenarios with the expert, render cameras and write a DrivingSample dataset."""
    from autovla.data.schema import CAMERA_NAMES, STANDARD_CAMERAS
    from autovla.sim.export import generate_dataset

    generate_dataset(
        out,
        scenes,
        seed,
        workers,
        types or None,
        _size(image_size),
        progress,
        samples_per_scene,
        cameras=CAMERA_NAMES if back_cameras else STANDARD_CAMERAS,
    )
    console.print(f"ok: dataset in {out}")


@app.command("types")
def list_types() -> None:
    """List the scenario types and whether each is complex."""
    from autovla.sim.scenarios import SCENARIO_TYPES

    console.print(table("scenario types", ["type", "complex"], SCENARIO_TYPES.items()))


@app.command()
def score(
    path: Path = typer.Argument(..., help="Dataset directory written by `sim generate`."),
    split: str = typer.Option(None, help="Only this split."),
    limit: int = typer.Option(0, help="Score at most this many samples (0 = all)."),
) -> None:
    """Score each sample's expert future with the NAVSIM v1.1 scorer, by scenario type
    (a sanity check of the data and the scorer; unscorable samples are counted apart)."""
    import numpy as np

    from autovla.data.manifest import iter_samples
    from autovla.scoring import score_sample

    rows: dict[str, list[dict]] = {}
    errors: list[str] = []
    for i, s in enumerate(iter_samples(path, split)):
        if limit and i >= limit:
            break
        if s.future is None or not s.scoring:
            continue
        try:
            row = score_sample(path, s, s.future_array()[None]).row(0)
        except (OSError, ValueError) as e:  # an unreadable cache: counted as failed
            errors.append(f"{type(e).__name__}: {e}")
            row = {"pdms": float("nan")}
        rows.setdefault(s.scenario_type or "?", []).append(row)
    metrics = ["pdms", "nc", "dac", "ddc", "ttc", "comfort", "ep"]
    out = []
    for k, v in sorted(rows.items()):
        ok = [r for r in v if np.isfinite(r["pdms"])]
        means = (float(np.mean([r[m] for r in ok])) if ok else float("nan") for m in metrics)
        out.append((k, len(ok), len(v) - len(ok), *means))
    every = [r for v in rows.values() for r in v if np.isfinite(r["pdms"])]
    if every:
        out.append(("all", len(every), sum(len(v) for v in rows.values()) - len(every),
                    *(float(np.mean([r[m] for r in every])) for m in metrics)))  # fmt: skip
    console.print(table("expert plan scores", ["type", "n", "failed", *metrics], out))
    if errors:
        console.print(f"warning: {len(errors)} samples could not be scored; first: {errors[0]}")


@app.command()
def bev(
    path: Path = typer.Argument(..., help="Dataset directory."),
    sample_id: str = typer.Argument(..., help="Sample id."),
    out: Path = typer.Option(Path("bev.png"), help="Output PNG."),
) -> None:
    """Draw a sample's top-down view (its metric cache) with its expert future."""
    from autovla.data.manifest import iter_samples
    from autovla.scoring import load_cache
    from autovla.sim.render import render_bev

    sample = next((s for s in iter_samples(path) if s.id == sample_id), None)
    if sample is None:
        raise fail(f"no sample {sample_id!r} in {path}")
    data = load_cache(path, sample)
    trajs = {"expert": sample.future_array()} if sample.future else {}
    render_bev(data, trajs).save(out)
    console.print(f"ok: {out}")


@app.command()
def episode(
    scenario_type: str = typer.Argument(..., help="Scenario type (see `sim types`)."),
    seed: int = typer.Option(0, help="Scenario seed."),
    work_dir: Path = typer.Option(Path("episode"), help="Where camera frames are written."),
) -> None:
    """Drive one closed-loop episode with the expert planner and print its metrics."""
    from autovla.sim.closed_loop import expert_episode

    r = expert_episode(scenario_type, seed, work_dir)
    rows = [
        ("route_completion", r.route_completion),
        ("infraction_penalty", r.infraction_penalty),
        ("driving_score", r.driving_score),
        ("success", str(r.success)),
    ]
    rows += [(k, v) for k, v in r.infractions.items()]
    console.print(table(f"{scenario_type} seed {seed}", ["metric", "value"], rows))
