"""Small helpers shared by the command groups: the error policy, output, tables.

The error policy, in one place: every command runs inside `ErrorPolicyGroup.invoke` (the root
group, see `autovla.cli`), which turns an expected failure into one plain line on stderr and
exit code 1, and anything else into a short line with a hint to rerun with `--debug` (or
`AUTOVLA_DEBUG=1`) for the traceback. Expected failures are what `error_message` names: the
project's own exception classes (ConfigError, ManifestError, CheckpointError, ...), a
`ValueError` raised by the project's code, file system errors with their file, pydantic
validation errors, JSON / YAML / UTF-8 decoding errors and MemoryError. Commands therefore
just raise; they catch only to add context.

Nothing here goes through rich markup: ids, paths and model output may contain `[`, `/`, `]`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup
from typer.exceptions import TyperException

# markup=False: text built from data (ids, paths, reasoning) is printed as it is.
console = Console(markup=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, soft_wrap=True)

DEBUG_ENV = "AUTOVLA_DEBUG"
MAX_MESSAGE = 1000  # characters of one error line
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])  # src/autovla


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` as one printable line: lines joined, control characters escaped, length capped."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    out = ""
    for p in parts:
        out += p if not out else (" " if out.endswith(":") else "; ") + p
    out = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", out)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _defined_here(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "autovla"


def _raised_here(exc: BaseException) -> bool:
    """Raised by a line of this package (not inside a library it called)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR)


def error_message(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for an unexpected one (a bug)."""
    import yaml
    from pydantic import ValidationError

    from autovla.config import validation_message

    if isinstance(exc, ValidationError):
        return validation_message(exc)
    if isinstance(exc, UnicodeDecodeError):
        bad = exc.object[exc.start : exc.start + 1]
        return f"not valid {exc.encoding} text: byte {bad.hex()} at offset {exc.start}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        m = exc.problem_mark
        where = "" if m.name.startswith("<") else f"{m.name}, "
        return f"not valid YAML ({where}line {m.line + 1}, column {m.column + 1}): {exc.problem}"
    if isinstance(exc, yaml.YAMLError):
        return f"not valid YAML: {exc}"
    if isinstance(exc, MemoryError):
        return f"out of memory (MemoryError){': ' + str(exc) if str(exc) else ''}"
    if isinstance(exc, OSError):
        if exc.filename is not None:
            other = f" -> {exc.filename2}" if exc.filename2 is not None else ""
            return f"{exc.filename}{other}: {exc.strerror or type(exc).__name__}"
        return str(exc) or type(exc).__name__
    if _defined_here(exc) or (isinstance(exc, ValueError) and _raised_here(exc)):
        return str(exc) or type(exc).__name__
    return None


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def report_error(exc: BaseException, debug: bool = False) -> typer.Exit:
    """Print `exc` as the policy says and return the Exit (code 1) to raise."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    message = error_message(exc)
    if message is None:
        detail = one_line(f"{type(exc).__name__}: {exc}", limit=300)
        hint = "" if debug else f" (rerun with --debug or {DEBUG_ENV}=1 for the traceback)"
        typer.echo(f"internal error: {detail}{hint}", err=True)
    else:
        typer.echo(f"error: {one_line(message)}", err=True)
    return typer.Exit(1)


def _click_exception() -> type[Exception]:
    """The ClickException class of the click that typer runs on (recent typer ships its own)."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # older typer: the click package
        from click.exceptions import ClickException
    return ClickException


def usage_error(exc: Exception) -> typer.Exit:
    """A usage error (unknown option, missing or extra argument, bad value) as one plain line
    on stderr, like every other error; the exit code stays click's (2 for usage errors)."""
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    typer.echo(f"error: {where}{one_line(exc.format_message())}{hint}", err=True)  # type: ignore[attr-defined]
    return typer.Exit(getattr(exc, "exit_code", 2))


class ErrorPolicyGroup(TyperGroup):
    """The root command group: runs every command under the error policy."""

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        # the root's own options and arguments are parsed here, outside `invoke`
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _click_exception() as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed: not an error
                raise
            raise usage_error(exc) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _click_exception() as exc:  # a subcommand's usage error
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            raise usage_error(exc) from None
        except (typer.Exit, typer.Abort, TyperException):  # exits: click's job
            raise
        except Exception as exc:
            debug = bool(ctx.params.get("debug")) or debug_enabled()
            raise report_error(exc, debug) from None


def _flags_take_no_value() -> None:
    """Help shows an option's value type (`--seed <int>`); recent typer shows one for flags
    too (`--all <bool>`), as if they took a value. Flags show none, as in click's own help."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_flags_hidden", False):  # older typer: already right
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return shown(self, ctx)

    display_type_rich._flags_hidden = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error for a person (one plain line, no traceback) and return the Exit to raise."""
    typer.echo(f"error: {one_line(message)}", err=True)
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
