"""`autovla demo`: the whole pipeline on the embedded world in one command."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo_out"), help="Where every stage writes its outputs."),
    quick: bool = typer.Option(False, help="A smoke run in a few minutes (numbers mean little)."),
    fresh: bool = typer.Option(False, help="Redo every stage instead of reusing finished ones."),
) -> None:
    """Generate data, fit the codebook, train (SFT, RFT), evaluate, and write the report."""
    from autovla.demo import run_demo

    run_demo(out, preset="quick" if quick else "full", fresh=fresh, echo=typer.echo)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
