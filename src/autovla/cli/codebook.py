"""`autovla codebook ...`: fit, import and inspect the action codebook."""

from __future__ import annotations

from pathlib import Path

import typer

from autovla.cli.common import console, fail, table

app = typer.Typer(no_args_is_help=True)


def _dirs(data: list[Path] | None, extra: list[Path] | None) -> list[Path]:
    # click options take one value each: `--data A B C` leaves B and C as arguments
    dirs = [*(data or []), *(extra or [])]
    if not dirs:
        raise fail("give at least one dataset directory with --data DIR")
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise fail(f"dataset not found: {', '.join(missing)}")
    return dirs


@app.command()
def fit(
    extra: list[Path] = typer.Argument(None, help="More dataset directories.", show_default=False),
    data: list[Path] = typer.Option(None, "--data", help="Dataset directory (repeatable)."),
    size: int = typer.Option(2048, help="Number of tokens K."),
    tol: float = typer.Option(0.05, help="K-disk radius: mean corner distance (m)."),
    seed: int = typer.Option(0, help="Seed of the random picks."),
    max_segments: int = typer.Option(None, help="Use at most this many segments (first read)."),
    split: str = typer.Option(None, help="Only samples of this split."),
    allow_fewer: bool = typer.Option(False, help="Keep a codebook smaller than --size."),
    out: Path = typer.Option(..., "--out", help="Output .safetensors file."),
) -> None:
    """Fit a K-disk codebook on the 0.5 s segments (history and future) of datasets."""
    from autovla.tokenizer.fit import NotEnoughSegmentsError, fit_from_datasets

    dirs = _dirs(data, extra)
    try:
        cb = fit_from_datasets(
            dirs, size, tol, seed, max_segments=max_segments, split=split, allow_fewer=allow_fewer
        )
    except NotEnoughSegmentsError as e:
        raise e.worded_for("--allow-fewer") from None
    cb.save(out)
    m = cb.meta
    console.print(
        table(
            "codebook",
            ["", "value"],
            [
                ("tokens", cb.size),
                ("segments", m["segments"]),
                ("coverage (within tol)", m["coverage"]),
                ("usage (tokens used)", m["usage"]),
                ("assigned by k-disk", m["assigned_share"]),
            ],
        )
    )
    console.print(f"wrote {out}")


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="Reference agent_vocab.pkl (read with a safe loader)."),
    out: Path = typer.Option(..., "--out", help="Output .safetensors file."),
    agent: str = typer.Option("veh", help="Which token set: veh, ped or cyc."),
) -> None:
    """Convert the reference code's pickled codebook to the safetensors format."""
    from autovla.tokenizer.reference import import_reference

    cb = import_reference(file, agent)
    cb.save(out)
    console.print(f"wrote {out}: {cb.size} tokens")


@app.command()
def report(
    file: Path = typer.Argument(..., help="Codebook .safetensors file."),
    extra: list[Path] = typer.Argument(None, help="More dataset directories.", show_default=False),
    data: list[Path] = typer.Option(None, "--data", help="Dataset directory (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Output directory (report.json, PNGs)."),
    split: str = typer.Option(None, help="Only samples of this split."),
    max_samples: int = typer.Option(None, help="Evaluate at most this many samples."),
) -> None:
    """Reconstruction ADE/FDE (per step, by speed and curvature), coverage, usage, plots."""
    from autovla.tokenizer.codebook import Codebook
    from autovla.tokenizer.report import codebook_report

    dirs = _dirs(data, extra)
    cb = Codebook.load(file)
    rep = codebook_report(cb, dirs, out, split=split, max_samples=max_samples)
    q = rep["reconstruction"]
    rows = [("all", q["count"], q["ade"], q["fde"])]
    for group in ("by_speed", "by_curvature"):
        for name, s in q[group].items():
            if s["count"]:
                rows.append((f"{group[3:]} {name}", s["count"], s["ade"], s["fde"]))
    console.print(table("reconstruction (m)", ["subset", "samples", "ADE", "FDE"], rows))
    console.print(f"coverage {rep['coverage']:.3f}, usage {rep['usage']:.3f}; wrote {out}")
