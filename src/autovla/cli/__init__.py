"""The `autovla` command line: one Typer app; each command is a thin call into a module.

Sub-apps live in this package, one file per command group, and import their heavy
dependencies (torch, transformers) inside the commands so `autovla --help` stays fast.
Every command runs under one error policy (`autovla.cli.common`): an expected failure is one
line and exit code 1; `--debug` (or AUTOVLA_DEBUG=1) adds the traceback.
"""

from __future__ import annotations

from importlib import import_module

import typer

from autovla import __version__
from autovla.cli import data
from autovla.cli.common import DEBUG_ENV, ErrorPolicyGroup

app = typer.Typer(
    name="autovla",
    help="End-to-end driving with a vision-language-action model (AutoVLA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=ErrorPolicyGroup,
)
app.add_typer(data.app, name="data", help="Validate, inspect and convert driving datasets.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autovla {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        envvar=DEBUG_ENV,
        help=f"Print the traceback of any error (or set {DEBUG_ENV}=1).",
    ),
) -> None:
    """End-to-end driving with a vision-language-action model (AutoVLA)."""


GROUPS = {
    "sim": "The embedded driving world: generate datasets, score plans.",
    "codebook": "Fit, import and inspect the action codebook.",
    "model": "Build and inspect AutoVLA models.",
    "annotate": "Write reasoning text for complex scenes.",
    "train": "Supervised (SFT) and reinforcement (RFT) fine-tuning.",
    "eval": "Open-loop and closed-loop evaluation with reports.",
}
for _name, _help in GROUPS.items():
    app.add_typer(import_module(f"autovla.cli.{_name}").app, name=_name, help=_help)
for _name in ("plan", "demo", "serve"):
    import_module(f"autovla.cli.{_name}").register(app)


def main() -> None:
    """The `autovla` script, `python -m autovla` and `python -m autovla.cli` (accelerate)."""
    app()
