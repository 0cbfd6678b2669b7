"""The demo's report from the files its stages write: columns by loop, metric definitions,
step counts and stage times, and a training stage cut short said loudly everywhere."""

import html
import json
from pathlib import Path

import pytest

from autovla.demo import PRESETS, build_stages, run_demo
from autovla.demo_report import (
    COLUMNS,
    PLANNERS,
    headline_markdown,
    headline_rows,
    training_lines,
    write_demo_report,
)


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _fake_demo(out: Path, sft_stopped_by: str = "steps") -> None:
    for i, name in enumerate(PLANNERS):
        _write(
            out / "runs" / f"open-loop-{name}" / "results.json",
            {
                "overall": {"pdms": 0.8 + i / 100, "l2_avg": 1.0 + i / 10},
                "reasoning": {"slow_share": {"complex": 0.5, "straightforward": 0.125}},
                "latency": {"all": {"p50": 0.02}},
            },
        )
        _write(
            out / "runs" / f"closed-loop-{name}" / "results.json",
            {"overall": {"driving_score": 0.6 + i / 100, "success_rate": 0.25}},
        )
    steps = {"sft": (600 if sft_stopped_by == "steps" else 150, 600), "rft": (60, 60)}
    for stage, (step, max_steps) in steps.items():
        stopped = sft_stopped_by if stage == "sft" else "steps"
        _write(
            out / stage / "final" / "autovla.json",
            {"training": {"step": step, "max_steps": max_steps, "stopped_by": stopped}},
        )
    _write(out / "stages.json", {"sft": {"seconds": 120.0}, "rft": {"seconds": 30.0}})


def test_tables_hold_each_planner_and_column(tmp_path):
    _fake_demo(tmp_path)
    rows = headline_rows(tmp_path)
    assert "open loop" in rows[0] and "closed loop" in rows[0]
    assert rows[2].startswith("constant-velocity") and rows[2].split()[1] == "0.800"
    assert rows[3].split()[1:3] == ["0.810", "1.100"]  # sft: PDMS, L2
    md = headline_markdown(tmp_path).splitlines()
    assert md[0].startswith("| planner | PDMS (open) | L2 avg (m) (open)")
    assert "driving score (closed)" in md[0]
    assert md[3] == "| sft | 0.810 | 1.100 | 0.500 | 0.125 | 0.020 | 0.610 | 0.250 |"
    assert not any("WARNING" in r for r in rows)


def test_report_defines_every_metric_and_shows_steps_and_times(tmp_path):
    _fake_demo(tmp_path, sft_stopped_by="steps")
    stages = build_stages(tmp_path, PRESETS["quick"])
    page = write_demo_report(tmp_path, stages, PRESETS["quick"]).read_text()
    for name, loop, definition in COLUMNS:
        assert f"<b>{name}</b> ({loop} loop): {html.escape(definition)}" in page
    assert "open loop, test split" in page and "closed loop, fresh scenarios" in page
    assert "sft: step 600 of 600, all steps done, 2.0 min" in page
    assert "<td>sft</td><td>120</td>" in page and "autovla train sft --config" in page
    assert (tmp_path / "headline.md").read_text() == headline_markdown(tmp_path)


def test_a_stage_cut_short_is_marked_in_table_lines_and_report(tmp_path):
    _fake_demo(tmp_path, sft_stopped_by="time")
    assert training_lines(tmp_path)[0].startswith("sft: step 150 of 600, CUT SHORT")
    rows = headline_rows(tmp_path)
    assert any(r.startswith("sft (cut short)") for r in rows)
    # RFT trained from the short SFT model: its row is marked too
    assert any(r.startswith("rft (cut short)") for r in rows)
    assert rows[-2].startswith("WARNING: sft did not run all its steps")
    assert rows[-1].startswith("WARNING: rft did not run all its steps")
    assert "| sft (cut short) |" in headline_markdown(tmp_path)
    page = write_demo_report(tmp_path, [], PRESETS["quick"]).read_text()
    assert "WARNING: the sft stage did not run all its steps" in page


def test_older_checkpoints_without_stopped_by_are_judged_by_their_step_count(tmp_path):
    _fake_demo(tmp_path)
    for stage, step in (("sft", 600), ("rft", 30)):
        meta = tmp_path / stage / "final" / "autovla.json"
        meta.write_text(json.dumps({"training": {"step": step, "max_steps": 600 if stage ==
                                    "sft" else 60}}))  # fmt: skip
    lines = training_lines(tmp_path)
    assert lines[0].startswith("sft: step 600 of 600, all steps done")
    assert lines[1].startswith("rft: step 30 of 60, stopped")
    assert next(r for r in headline_rows(tmp_path) if "cut short" in r).startswith("rft")


def test_missing_null_and_non_finite_values_show_as_dashes(tmp_path):
    _fake_demo(tmp_path)
    (tmp_path / "runs" / "open-loop-sft" / "results.json").write_text(
        '{"overall": {"pdms": NaN, "l2_avg": "x"}, "reasoning": null, "latency": null}'
    )
    (tmp_path / "runs" / "closed-loop-sft" / "results.json").write_text("{not json")
    (tmp_path / "rft" / "final" / "autovla.json").write_text("[]")
    row = next(r for r in headline_rows(tmp_path) if r.startswith("sft"))
    assert row.split()[1:] == ["-"] * len(COLUMNS)
    assert [line.split(":")[0] for line in training_lines(tmp_path)] == ["sft"]


def test_a_demo_folder_of_other_settings_is_refused_before_anything_runs(tmp_path):
    _fake_demo(tmp_path)
    state = json.loads((tmp_path / "stages.json").read_text())
    (tmp_path / "stages.json").write_text(json.dumps({**state, "_preset": "quick"}))
    with pytest.raises(ValueError, match="other settings"):  # an older run: no _config
        run_demo(tmp_path, preset="quick", echo=lambda *_: None)
    other = {**PRESETS["quick"].model_dump(), "sft_steps": 31}
    (tmp_path / "stages.json").write_text(json.dumps({"_preset": "quick", "_config": other}))
    with pytest.raises(ValueError, match="--fresh"):
        run_demo(tmp_path, preset="quick", echo=lambda *_: None)


def test_a_resumed_stage_counts_the_time_of_its_interrupted_invocations(tmp_path, monkeypatch):
    import time

    from autovla import demo

    out = tmp_path / "done.txt"
    calls = []

    def fake_invoke(app, args):  # 0.2 s of work; the first call is interrupted (exit 143)
        calls.append(args)
        time.sleep(0.2)
        if len(calls) == 1:
            return 143
        out.write_text("ok")
        return 0

    monkeypatch.setattr(demo, "_invoke", fake_invoke)
    stage = demo.Stage("train", "a training", ["train", "sft"], [out])
    state_file, state = tmp_path / "stages.json", {}
    with pytest.raises(demo.DemoError, match="stage train failed \\(exit 143\\)"):
        demo.run_stages([stage], state_file, state, echo=lambda *_: None)
    saved = json.loads(state_file.read_text())
    assert "train" not in saved and saved[demo.PARTIAL]["train"] >= 0.2
    state = json.loads(state_file.read_text())  # a new invocation reads the file
    demo.run_stages([stage], state_file, state, echo=lambda *_: None)
    saved = json.loads(state_file.read_text())
    assert demo.PARTIAL not in saved
    assert 0.2 <= saved["train"]["seconds"] < 0.4 <= saved["train"]["seconds_all"]
    entry = {"seconds": 600.2, "seconds_all": 900.4}
    assert demo.stage_seconds(entry) == "600 (900 with interrupted runs)"
    assert demo.stage_seconds({"seconds": 12.4}) == "12" and demo.stage_seconds(None) == "-"
    # a stage whose finishing step raises keeps its time for the next invocation
    out.unlink()
    del state["train"]

    def broken() -> None:
        raise RuntimeError("finish failed")

    stage.finish = broken
    with pytest.raises(RuntimeError, match="finish failed"):
        demo.run_stages([stage], state_file, state, echo=lambda *_: None)
    assert json.loads(state_file.read_text())[demo.PARTIAL]["train"] >= 0.2
