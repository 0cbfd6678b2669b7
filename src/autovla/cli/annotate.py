"""`autovla annotate ...`: write reasoning text for complex scenes."""

from __future__ import annotations

from pathlib import Path

import typer

from autovla.cli.common import console, fail

app = typer.Typer(no_args_is_help=True)


@app.command()
def rules(
    path: Path = typer.Argument(..., help="Dataset directory or manifest file (updated in place)."),
    all_samples: bool = typer.Option(
        False, "--all", help="Annotate every sample, not only those marked complex."
    ),
    seed: int = typer.Option(0, help="Seed for the wording (same seed, same bytes)."),
) -> None:
    """Four-part chain of thought from each sample's scene facts and future (no model needed)."""
    from autovla.annotate.rules import annotate_dataset
    from autovla.data.manifest import ManifestError

    try:
        summary = annotate_dataset(path, seed=seed, all_samples=all_samples)
    except (FileNotFoundError, ManifestError) as e:
        raise fail(str(e)) from None
    if summary.total == 0:
        raise fail(f"no samples found in {path}")
    console.print(
        f"annotated {summary.annotated} of {summary.total} samples "
        f"({summary.changed} records changed, {summary.skipped_no_future} eligible samples "
        "skipped: no future or meta-action)"
    )
