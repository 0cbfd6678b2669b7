"""The README's promises: its two commands exist and its CLI reference matches the app."""

from pathlib import Path

from autovla.cli import app
from autovla.cli.reference import BEGIN, END, cli_reference, replace_section

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    readme = (ROOT / "README.md").read_text()
    expected = replace_section(readme, cli_reference(app))
    assert readme == expected, "run: .venv/bin/python -m autovla.cli.reference README.md"


def test_two_commands_and_ci():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci/run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile


def test_reference_lists_every_command():
    body = cli_reference(app)
    assert "`autovla data validate`" in body and "`autovla data stats`" in body
    assert BEGIN not in body and END not in body
