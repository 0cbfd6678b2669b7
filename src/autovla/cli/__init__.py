"""The `autovla` command line: one Typer app; each command is a thin call into a module.

Sub-apps live in this package, one file per command group, and import their heavy
dependencies (torch, transformers) inside the commands so `autovla --help` stays fast.
"""

from __future__ import annotations

import typer

from autovla import __version__
from autovla.cli import data

app = typer.Typer(
    name="autovla",
    help="End-to-end driving with a vision-language-action model (AutoVLA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data", help="Validate, inspect and convert driving datasets.")

# Command groups added by later parts register here (see _register below).


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autovla {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """End-to-end driving with a vision-language-action model (AutoVLA)."""


def _register() -> None:
    """Attach the optional command groups whose modules exist."""
    import importlib

    groups = {
        "sim": "The embedded driving world: generate datasets, score plans.",
        "codebook": "Fit, import and inspect the action codebook.",
        "model": "Build and inspect AutoVLA models.",
        "annotate": "Write reasoning text for complex scenes.",
        "train": "Supervised (SFT) and reinforcement (RFT) fine-tuning.",
        "eval": "Open-loop and closed-loop evaluation with reports.",
    }
    for name, help_text in groups.items():
        try:
            module = importlib.import_module(f"autovla.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"autovla.cli.{name}":
                continue
            raise
        app.add_typer(module.app, name=name, help=help_text)
    for name in ("plan", "demo"):
        try:
            module = importlib.import_module(f"autovla.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"autovla.cli.{name}":
                continue
            raise
        module.register(app)


_register()


def main() -> None:
    app()
