"""Small helpers shared by the command groups: errors to the user, tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error for a person (no traceback) and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


ACTION_CHOICE_HELP = (
    "Greedy action tokens: argmax (most likely token) or expected (the token nearest the "
    "probability-weighted mean motion)."
)


DECODING_HELP = (
    "Decoding path: fast (static cache), reference (dynamic cache, one forward per step) or "
    "auto (fast where the model's attention supports it). Both give the same plans."
)


def check_decoding(decoding: str) -> None:
    """The CLI's --decoding, checked before any model is loaded."""
    if decoding not in ("auto", "fast", "reference"):
        raise fail(f"--decoding must be auto, fast or reference, got {decoding!r}")


def check_action_choice(action_choice: str) -> None:
    """The CLI's --action-choice, checked before any model is loaded."""
    if action_choice not in ("argmax", "expected"):
        raise fail(f"--action-choice must be argmax or expected, got {action_choice!r}")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r))
    return t
