"""The CLI reference in README.md, generated from the app so it cannot drift.

`python -m autovla.cli.reference README.md` rewrites the part of the README between the two
marker lines; a test fails when the README is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

BEGIN = "<!-- cli-reference:begin -->"
END = "<!-- cli-reference:end -->"


def _walk(cmd, path: list[str]) -> list[tuple[str, str]]:
    # Duck-typed: recent typer ships its own click, so groups are not click.Group instances.
    rows = []
    if hasattr(cmd, "commands"):
        for name in sorted(cmd.commands):
            rows += _walk(cmd.commands[name], [*path, name])
    else:
        short = (cmd.get_short_help_str(limit=200) or "").strip()
        rows.append((" ".join(path), short))
    return rows


def cli_reference(app: typer.Typer) -> str:
    """A markdown table: every command with its one-line description."""
    root = typer.main.get_command(app)
    lines = ["| command | what it does |", "| --- | --- |"]
    for name, short in _walk(root, ["autovla"]):
        lines.append(f"| `{name}` | {short} |")
    lines.append("")
    lines.append("Every command takes `--help` for its options.")
    return "\n".join(lines)


def replace_section(text: str, body: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"the README needs the markers {BEGIN} and {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    from autovla.cli import app

    args = argv if argv is not None else sys.argv[1:]
    readme = Path(args[0] if args else "README.md")
    readme.write_text(replace_section(readme.read_text(), cli_reference(app)))
    print(f"updated the CLI reference in {readme}")


if __name__ == "__main__":
    main()
