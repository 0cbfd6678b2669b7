"""Closed-loop evaluation on the embedded world: results, GIFs, report, bad input."""

import json

import pytest
from typer.testing import CliRunner

from autovla.cli import app
from autovla.eval.baselines import make_baseline
from autovla.eval.closed_loop import episode_plan, render_closed_loop_report, run_closed_loop

runner = CliRunner()


def test_episode_plan_cycles_types():
    assert episode_plan(["a", "b"], 3, 10) == [("a", 10), ("b", 11), ("a", 12)]


@pytest.fixture(scope="module")
def expert_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cl") / "expert"
    res = run_closed_loop(
        None, 2, 5, out, types=["free_cruise", "red_light"], gif_episodes=(1,),
        planner_name="expert", progress=False,
    )  # fmt: skip
    return out, res


def test_expert_drives_cleanly(expert_run):
    out, res = expert_run
    o = res["overall"]
    assert o["n"] == 2 and o["driving_score"] >= 0.95 and o["success_rate"] == 1.0
    assert set(res["by_scenario"]) == {"free_cruise", "red_light"}
    rows = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert [r["scenario_type"] for r in rows] == ["free_cruise", "red_light"]
    assert rows[1]["gif"] and (out / rows[1]["gif"]).stat().st_size > 1000
    assert "gif" not in rows[0]


def test_report_shows_tables_and_gif(expert_run):
    out, _ = expert_run
    page = render_closed_loop_report(out).read_text()
    assert "<table>" in page and "driving_score" in page
    assert "data:image/gif;base64," in page and "red_light" in page


def test_constant_velocity_runs_into_trouble(tmp_path):
    res = run_closed_loop(
        make_baseline("constant-velocity"), 1, 3, tmp_path / "cv",
        types=["red_light"], planner_name="cv", progress=False,
    )  # fmt: skip
    assert res["overall"]["driving_score"] < 0.95  # it runs the red light


def test_bad_input(tmp_path, expert_run):
    out, _ = expert_run
    with pytest.raises(FileExistsError):
        run_closed_loop(None, 1, 0, out, progress=False)
    with pytest.raises(ValueError, match="unknown scenario type"):
        run_closed_loop(None, 1, 0, tmp_path / "x", types=["moon_landing"], progress=False)
    result = runner.invoke(app, ["eval", "closed-loop", "--out", str(out), "--baseline", "expert"])
    assert result.exit_code == 1 and "exists" in result.output
    result = runner.invoke(app, ["eval", "closed-loop", "--out", str(tmp_path / "y")])
    assert result.exit_code == 1 and "exactly one of" in result.output


def test_cli_table_shows_the_penalty_and_off_road(tmp_path):
    """The printed table has the driving score's factors: the infraction penalty includes
    driving off road, which no infraction count shows."""
    r = runner.invoke(app, ["eval", "closed-loop", "--out", str(tmp_path / "cl"), "--baseline",
                            "constant-velocity", "--scenarios", "1", "--types", "free_cruise",
                            "--no-report"])  # fmt: skip
    assert r.exit_code == 0, r.output
    for row in ("driving_score", "route_completion", "infraction_penalty", "off_road_fraction"):
        assert row in r.output
