"""The CLI's one error policy: expected failures are one plain line and exit code 1; anything
else a short line with a --debug hint; no rich markup on text from data; every entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from autovla.cli import app
from autovla.cli.common import error_message, one_line
from autovla.config import ConfigError

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


class _Point(BaseModel):
    x: float
    y: int = 0


def _raised(fn):
    try:
        fn()
    except BaseException as e:
        return e
    raise AssertionError("no exception")


def test_expected_failures_are_named(tmp_path):
    missing = tmp_path / "no[such]/file.json"
    msg = error_message(_raised(missing.read_text))
    assert msg == f"{missing}: No such file or directory"
    msg = error_message(_raised(tmp_path.read_text))
    assert msg == f"{tmp_path}: Is a directory"
    bad = error_message(_raised(lambda: _Point.model_validate({"x": "abc", "y": [1]})))
    assert bad.startswith("invalid _Point: x: ") and "y: " in bad and "(got 'abc')" in bad
    assert "\n" not in bad
    assert error_message(_raised(lambda: json.loads('{"a": 1,\n "b": }'))) == (
        "not valid JSON at line 2, column 7: Expecting value"
    )
    assert error_message(_raised(lambda: yaml.safe_load("a: [1,\nb: 2"))) == (
        "not valid YAML (line 2, column 5): expected ',' or ']', but got '<stream end>'"
    )
    assert error_message(_raised(lambda: b"ok\xff".decode())) == (
        "not valid utf-8 text: byte ff at offset 2"
    )
    assert error_message(MemoryError()) == "out of memory (MemoryError)"
    assert error_message(ConfigError("c.yaml: x")) == "c.yaml: x"


def test_unexpected_failures_are_not_named():
    import numpy as np

    assert error_message(RuntimeError("boom")) is None
    assert error_message(KeyError("k")) is None
    # a ValueError from a library is a bug of ours (we passed it something wrong)
    assert error_message(_raised(lambda: np.zeros(3).reshape(2, 2))) is None
    assert isinstance(_raised(lambda: _Point(x="a")), ValidationError)


def test_one_line():
    assert one_line("invalid config:\n  a: bad\n  b: worse") == "invalid config: a: bad; b: worse"
    assert one_line("id \x1b[31mred\r") == "id \\x1b[31mred"
    assert len(one_line("x" * 5000)) == 1000


@pytest.fixture
def boom_command(monkeypatch):
    """`autovla sim types` made to raise what the test sets."""
    import autovla.sim.scenarios as scenarios

    holder: dict[str, BaseException] = {}

    class Raising(dict):
        def items(self):
            raise holder["exc"]

    monkeypatch.setattr(scenarios, "SCENARIO_TYPES", Raising())
    return holder


def test_unexpected_exception_is_one_line_with_a_hint(boom_command):
    boom_command["exc"] = RuntimeError("boom [/x] happened")
    r = runner.invoke(app, ["sim", "types"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.strip() == (
        "internal error: RuntimeError: boom [/x] happened "
        "(rerun with --debug or AUTOVLA_DEBUG=1 for the traceback)"
    )


@pytest.mark.parametrize("how", ["option", "env"])
def test_debug_prints_the_traceback(boom_command, how):
    boom_command["exc"] = ConfigError("recipe.yaml: line 3: bad")
    args = ["--debug", "sim", "types"] if how == "option" else ["sim", "types"]
    env = {"AUTOVLA_DEBUG": "1"} if how == "env" else {}
    r = runner.invoke(app, args, env=env)
    assert r.exit_code == 1
    assert "Traceback" in r.stderr and "ConfigError" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: recipe.yaml: line 3: bad"


def test_expected_error_with_markup_characters_is_printed_verbatim(tmp_path):
    weird = tmp_path / "[bold]a[/]" / "[/x]"
    r = runner.invoke(app, ["model", "info", str(weird)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr == f"error: {weird}: no such model directory\n"


@pytest.mark.parametrize(
    "args, says",
    [
        (["sim", "types", "--no-such-option"], "No such option: --no-such-option"),
        (["--no-such-option"], "No such option: --no-such-option"),  # the root's own options
        (["train", "sft"], "Missing option '--config'"),
        (["eval", "open-loop", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_usage_errors_are_one_line_with_click_exit_code(args, says):
    """A usage error is one `error:` line naming the command, with a --help hint, and keeps
    click's exit code 2 (no box drawn around it)."""
    r = runner.invoke(app, args)
    assert r.exit_code == 2
    (line,) = r.stderr.splitlines()
    assert line.startswith("error: ") and says in line and line.endswith("--help)")


def test_help_shows_no_value_for_flags():
    """`--all` takes no value: help shows none (recent typer would print `<bool>`)."""
    r = runner.invoke(app, ["annotate", "rules", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    (line,) = [x for x in r.output.splitlines() if "--all" in x]
    assert "<bool>" not in line and "bool" not in line.lower().split("--all", 1)[1][:12]
    (seed,) = [x for x in r.output.splitlines() if "--seed" in x]
    assert "int" in seed.lower()  # options that take a value still show its type


@pytest.mark.parametrize(
    "entry",
    [
        ["-m", "autovla"],
        ["-m", "autovla.cli"],  # what `accelerate launch -m autovla.cli` runs
        ["-c", "import sys; from autovla.cli import main; sys.argv[0] = 'autovla'; main()"],
    ],
    ids=["python -m autovla", "python -m autovla.cli", "autovla.cli:main"],
)
def test_every_entry_point_uses_the_policy(tmp_path, entry):
    ds = tmp_path / "d[1]"
    ds.mkdir()
    (ds / "manifest.jsonl").write_bytes(b'{"id": "a"\n')
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("AUTOVLA_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, *entry, "sim", "score", str(ds)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(ds) in lines[0]
