"""`autovla data ...`: validate and describe datasets (converters register here too)."""

from __future__ import annotations

from pathlib import Path

import typer

from autovla.cli.common import console, fail, table

app = typer.Typer(no_args_is_help=True)


@app.command()
def validate(
    path: Path = typer.Argument(..., help="Dataset directory or manifest file."),
    images: bool = typer.Option(True, help="Check that every image exists and decodes."),
    max_errors: int = typer.Option(200, help="Print at most this many errors (all are counted)."),
) -> None:
    """Check every record, id and image of a dataset; exit 1 on any error."""
    from autovla.data.validate import validate_dataset

    try:
        valid, errors = validate_dataset(path, check_images=images)
    except FileNotFoundError as e:
        raise fail(str(e)) from None
    for e in errors[:max_errors]:
        typer.echo(str(e))  # plain: a person greps these, rich would wrap them
    if len(errors) > max_errors:
        console.print(f"... and {len(errors) - max_errors} more")
    if errors:
        bad = len({(e.file, e.line) for e in errors})
        raise fail(f"{len(errors)} errors in {bad} records ({valid} records valid)")
    console.print(f"[green]ok[/]: {valid} records valid")


@app.command()
def stats(path: Path = typer.Argument(..., help="Dataset directory or manifest file.")) -> None:
    """Counts by source, split, scenario, instruction, complexity; speed and path length."""
    from autovla.data.manifest import ManifestError
    from autovla.data.stats import CATEGORIES, dataset_stats

    try:
        st = dataset_stats(path)
    except (FileNotFoundError, ManifestError) as e:
        raise fail(str(e)) from None
    console.print(f"{st.total} samples in {path}")
    for cat in CATEGORIES:
        rows = [
            (k, n, f"{100 * n / max(st.total, 1):.1f}%") for k, n in st.counts[cat].most_common()
        ]
        console.print(table(cat, [cat, "count", "share"], rows))
    for name, values, unit in (
        ("speed now", st.speeds, "m/s"),
        ("future path length", st.path_lengths, "m"),
    ):
        q = st.quantiles(values)
        if q:
            console.print(table(f"{name} ({unit})", ["", *q], [(name, *q.values())]))
