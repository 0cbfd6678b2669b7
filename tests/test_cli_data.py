import json
import shutil

from typer.testing import CliRunner

from autovla.cli import app

runner = CliRunner()


def test_help_lists_commands_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "data" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("autovla ")


def test_validate_ok(small_dataset):
    result = runner.invoke(app, ["data", "validate", str(small_dataset)])
    assert result.exit_code == 0, result.output
    assert "6 records valid" in result.output


def test_validate_names_every_corrupted_record(small_dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_dataset, bad)
    lines = (bad / "manifest.jsonl").read_text().splitlines()
    rec1 = json.loads(lines[1])
    rec1["instruction"] = "hover"
    lines[1] = json.dumps(rec1)
    rec3 = json.loads(lines[3])
    del rec3["ego"]["vx"]
    lines[3] = json.dumps(rec3)
    lines[4] = lines[4][:40]  # truncated line: malformed JSON
    (bad / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (bad / "images/0005/front_2.png").unlink()
    (bad / "images/0000/front_left_0.png").write_bytes(b"\x89PNG broken")

    result = runner.invoke(app, ["data", "validate", str(bad)])
    out = result.output
    assert result.exit_code == 1
    assert ":2 (id 's0001'): field 'instruction'" in out
    assert ":4 (id 's0003'): field 'ego.vx': missing required field" in out
    assert ":5: malformed JSON" in out
    assert "(id 's0005'): field 'cameras.front.2': image not found" in out
    assert "(id 's0000'): field 'cameras.front_left.0': image does not decode" in out
    assert "5 errors in 5 records (1 record valid)" in out


def test_stats_table(small_dataset):
    result = runner.invoke(app, ["data", "stats", str(small_dataset)])
    assert result.exit_code == 0, result.output
    assert "6 samples" in result.output
    for word in ("synthetic", "free_cruise", "go straight", "complex", "without reasoning"):
        assert word in result.output


def test_missing_dataset_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "dataset not found" in result.output


def test_validate_empty_dataset_says_so(tmp_path):
    (tmp_path / "manifest.jsonl").write_text("")
    r = runner.invoke(app, ["data", "validate", str(tmp_path)])
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1] == f"error: {tmp_path}: no records"
