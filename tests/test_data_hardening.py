"""Hostile and broken data: named errors (file, line/record, field), bounded work, official
metric definitions on hand-computed examples."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autovla.cli import app
from autovla.data import manifest as M
from autovla.data.manifest import ManifestError, iter_samples, json_depth, write_manifest
from autovla.data.schema import (
    MAX_TEXT_CHARS,
    FutureObject,
    Preference,
    SceneFacts,
    SceneObject,
)
from autovla.data.validate import validate_dataset
from tests.conftest import make_sample

runner = CliRunner()


def _line(mutate=None, i: int = 0) -> str:
    d = json.loads(make_sample(i).model_dump_json(exclude_none=True))
    if mutate:
        mutate(d)
    return json.dumps(d, allow_nan=True)


# --------------------------------------------------------------------- schema limits
BAD_RECORDS = [
    (lambda d: d["cameras"].pop("front"), "cameras", "missing camera"),
    (lambda d: d.update(history=[]), "history", "4 poses"),
    (lambda d: d.update(history=[[0.0, 0.0, 0.0]] * 40), "history", "4 poses"),
    (lambda d: d["history"].reverse(), "history", "current one"),
    (lambda d: d["ego"].update(vx=1e6), "ego", "above 70"),
    (lambda d: d["ego"].update(ax=-400.0), "ego", "acceleration"),
    (lambda d: d.update(id="a/../../x"), "id", "file name"),
    (lambda d: d.update(meta={"w": [1.0, float("nan")]}), "meta", "meta.w.1 is nan"),
    (lambda d: d.update(reasoning="x" * (MAX_TEXT_CHARS + 1)), "reasoning", "at most"),
    (lambda d: d.update(scenario_type="y" * (MAX_TEXT_CHARS + 1)), "scenario_type", "at most"),
    (lambda d: d["future"][3].__setitem__(0, 5e3), "future", "1000 m"),
    (lambda d: d["scene"]["objects"][0].update(box=[1, 2, 0, 400, 2]), "scene.objects.0.box", ""),
]


def test_validate_names_file_line_and_field(tmp_path: Path) -> None:
    """Every plausibility/size limit is reported by `data validate` with file, line, field."""
    lines = [_line(m, i) for i, (m, _, _) in enumerate(BAD_RECORDS)] + [_line(None, 20)]
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    valid, errors = validate_dataset(tmp_path, check_images=False, progress=False)
    assert valid == 1
    by_line = {e.line: e for e in errors}
    assert sorted(by_line) == list(range(1, len(BAD_RECORDS) + 1))
    for n, (_, field, message) in enumerate(BAD_RECORDS, 1):
        e = by_line[n]
        assert e.file == str(path) and e.field.startswith(field), (n, e)
        assert message in e.message, (n, e)
    r = runner.invoke(app, ["data", "validate", str(tmp_path), "--no-images"])
    assert r.exit_code == 1
    assert f"{path}:8 (id 's0007'): field 'meta':" in r.output


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text("\n\n")
    valid, errors = validate_dataset(tmp_path, progress=False)
    assert valid == 0 and "no records" in errors[0].message
    assert runner.invoke(app, ["data", "validate", str(tmp_path)]).exit_code == 1


# --------------------------------------------------------------------- reading lines
def test_non_utf8_is_a_named_error_everywhere(tmp_path: Path) -> None:
    good = _line(None, 1)
    (tmp_path / "manifest.jsonl").write_bytes(good.encode() + b"\n" + b'{"id": "\xff\xfe"}\n')
    with pytest.raises(ManifestError, match=r"manifest.jsonl:2: not UTF-8"):
        list(iter_samples(tmp_path))  # what training, stats, eval and plan read through
    _, errors = validate_dataset(tmp_path, check_images=False, progress=False)
    assert [(e.line, e.message[:12]) for e in errors] == [(2, "not UTF-8 te")]
    r = runner.invoke(app, ["data", "stats", str(tmp_path)])
    assert r.exit_code == 1 and "manifest.jsonl:2" in r.output and "Traceback" not in r.output


def test_long_lines_are_skipped_without_reading_them_whole(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(M, "MAX_LINE_BYTES", 2000)
    good = _line(None, 1)
    assert len(good) < 2000
    (tmp_path / "manifest.jsonl").write_text('{"x": "' + "z" * 50_000 + '"}\n' + good + "\n")
    items = list(M.check_manifest(tmp_path))
    assert items[0][1] == 1 and "longer than 2000 bytes" in items[0][2][0].message
    assert items[1][1] == 2 and items[1][2].id == "s0001"  # line numbers stay right


def test_deep_json_is_refused_before_parsing(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ManifestError, match=r":1: JSON nested 100000 deep"):
        list(iter_samples(tmp_path))
    # brackets inside strings (escaped quotes included) do not count
    assert json_depth(json.dumps({"a": "[" * 500 + '\\"' + "{" * 50, "b": [[1]]})) == 3


def test_markup_in_data_is_printed_as_written(tmp_path: Path) -> None:
    s = make_sample(0).model_copy(update={"id": "[bold]x", "scenario_type": "[red]y"})
    write_manifest(tmp_path / "[ds]", [s])
    r = runner.invoke(app, ["data", "stats", str(tmp_path / "[ds]")])
    assert r.exit_code == 0, r.output
    assert "[red]y" in r.output and f"1 samples in {tmp_path / '[ds]'}" in r.output


# --------------------------------------------------------------------- other entry points
def test_annotate_refuses_nan_in_meta(tmp_path: Path) -> None:
    """NaN in meta is refused with a named error (not silently rewritten to null); the
    manifest is left as it was."""
    from autovla.annotate.rules import annotate_dataset

    path = tmp_path / "manifest.jsonl"
    path.write_text(_line(lambda d: d.update(meta={"score": float("nan")})) + "\n")
    before = path.read_bytes()
    with pytest.raises(ManifestError) as e:
        annotate_dataset(tmp_path)
    assert e.value.error.line == 1 and e.value.error.field == "meta"
    assert "meta.score is nan" in str(e.value)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    r = runner.invoke(app, ["annotate", "rules", str(tmp_path)])
    assert r.exit_code == 1 and path.read_bytes() == before


def test_tfrecord_length_is_bounded(tmp_path: Path) -> None:
    """A record declaring 2^40 bytes: a named error with file and offset, nothing allocated."""
    from autovla.data.sources.runner import ConvertError
    from autovla.data.sources.tfrecord import encode_record, masked_crc, read_tfrecord

    header = struct.pack("<Q", 2**40)
    path = tmp_path / "training.tfrecord"
    path.write_bytes(encode_record(b"ok") + header + struct.pack("<I", masked_crc(header)) + b"x")
    with pytest.raises(ConvertError, match=r"record at byte 18 declares 1099511627776 bytes"):
        list(read_tfrecord(path))
    header = struct.pack("<Q", 1000)  # under the bound, but past the end of the file
    path.write_bytes(header + struct.pack("<I", masked_crc(header)) + b"x" * 10)
    with pytest.raises(ConvertError, match=r"'#0' field 'data': truncated record at byte 0"):
        list(read_tfrecord(path))


def test_codebook_report_with_few_samples(tmp_path: Path) -> None:
    from autovla.tokenizer.report import codebook_report
    from tests.model_fixtures import tiny_codebook

    write_manifest(tmp_path / "ds", [make_sample(i) for i in range(3)])
    rep = codebook_report(tiny_codebook(), [tmp_path / "ds"], tmp_path / "out")
    assert rep["samples"] == 3 and (tmp_path / "out" / "reconstructions.png").is_file()


def test_stale_manifest_temps_are_removed_for_this_shard_only(tmp_path: Path) -> None:
    from autovla.data.sources.runner import Unit, run_conversion, unit_manifest

    units = [Unit(i, f"u{i}", None) for i in range(2)]
    mine, theirs = (tmp_path / f".{unit_manifest(tmp_path, u).name}.k1lled_.tmp" for u in units)
    tmp_path.mkdir(exist_ok=True)
    mine.write_text("half")
    theirs.write_text("another shard's, in use")
    summary = run_conversion(units, lambda u: iter(()), tmp_path, shard=(1, 2), progress=False)
    assert summary.units_done == 1
    assert not mine.exists() and theirs.exists()


# --------------------------------------------------------------------- converters: NaN
def test_navsim_nan_and_text_values_are_named_and_skippable(tmp_path: Path) -> None:
    from autovla.data.sources.runner import ConvertError
    from tests.test_sources_navsim import convert, make_frames, write_log

    for value, reason in ((float("nan"), "finite"), ("fast", "not numbers")):
        frames = make_frames(tmp_path)
        frames[3]["ego_dynamic_state"] = [value, 0.0, 0.0, 0.0]
        write_log(tmp_path, frames)
        out = tmp_path / f"out-{reason}"
        with pytest.raises(ConvertError, match=reason) as e:
            convert(tmp_path, out)
        assert e.value.record == "tok03" and e.value.field == "ego_dynamic_state"
        summary = convert(tmp_path, tmp_path / f"skip-{reason}", skip_bad=True)
        assert summary.written == 0 and sum(summary.skipped.values()) == 1


def test_waymo_nan_is_named_and_skippable(tmp_path: Path) -> None:
    from autovla.data.sources.runner import ConvertError
    from autovla.data.sources.tfrecord import write_tfrecord
    from autovla.data.sources.waymo_proto import messages
    from tests.test_sources_waymo import convert, segment

    recs = segment(5, step_us=500_000)
    msg = messages()["E2EDFrame"].FromString(recs[4])
    msg.past_states.vel_x[-1] = float("nan")
    recs[4] = msg.SerializeToString()
    path = tmp_path / "training.tfrecord"
    write_tfrecord(path, recs)
    with pytest.raises(ConvertError, match="finite") as e:
        convert([path], tmp_path / "a")
    assert e.value.record.startswith("#4") and e.value.field == "past_states.vel_x"
    summary = convert([path], tmp_path / "b", skip_bad=True)
    assert summary.written == 1
    assert sum(v for k, v in summary.skipped.items() if not k.startswith("filtered")) == 1


# --------------------------------------------------------------------- official metrics
def test_rfs_floor_applies_once_to_the_average() -> None:
    """Worked example (v0 = 11 m/s: trust-region half-widths 1.0 m at 3 s, 1.8 m at 5 s).
    Rated: straight at 10 m/s, rating 10. The prediction is 3 m to the side at 3 s
    (d = 3: 10 * 0.1^2 = 0.1) and on the rated path at 5 s (10). Official: the average
    (0.1 + 10) / 2 = 5.05; it is outside a trust region at 3 s, so max(4, 5.05) = 5.05.
    Flooring each timestep first would give (4 + 10) / 2 = 7.0."""
    from autovla.eval.rfs import rater_feedback_score

    t4 = np.arange(1, 21) * 0.25
    pref = Preference(trajectories=[[(10 * t, 0.0) for t in t4]], scores=[10.0], hz=4)
    pred = np.stack([10 * np.arange(1, 11) * 0.5, np.zeros(10)], -1)
    pred[5, 1] = 3.0  # 3 s
    assert rater_feedback_score(pred, pref, v0=11.0) == pytest.approx(5.05)
    # inside a (rating 2) at 3 s and inside b (rating 3, 5 m to the left after 2.5 s) at 5 s:
    # no single trust region holds it at both times, so the floor applies: max(4, 2.5) = 4
    # (per-timestep flooring would not floor at all: 2.5)
    a = [(10 * t, 0.0) for t in t4]
    b = [(10 * t, 0.0 if t <= 2.5 else 5.0) for t in t4]
    pred2 = np.stack([10 * np.arange(1, 11) * 0.5, np.zeros(10)], -1)
    pred2[9, 1] = 5.0  # at 5 s on b, 5 m off a (d = 2.8: 2 * 0.1^1.8 ~ 0.03)
    two = Preference(trajectories=[a, b], scores=[2.0, 3.0], hz=4)
    assert rater_feedback_score(pred2, two, v0=11.0) == 4.0


def _car_future(x, y, steps=6):
    return [(x, y, 0.0)] * steps


def test_collision_box_is_translated_not_rotated() -> None:
    """A plan turned 90 degrees at (0, 3): rotated, the 4.084 m x 1.85 m box (shifted 0.5 m
    forward) spans y 0.958 ... 5.042; aligned with the current frame it spans y 2.075 ...
    3.925 and x -1.542 ... 2.542. A car whose cells lie at y 4.5 ... 5.5 (x -0.5 ... 0.5) is hit
    only by the rotated box."""
    from autovla.eval.metrics import bev_collision

    car = SceneObject(id="c", kind="vehicle", box=(0.0, 5.0, 0.0, 1.0, 1.0),
                      future=_car_future(0.0, 5.0))  # fmt: skip
    scene = SceneFacts(objects=[car], objects_tracked=True)
    plan = np.array([[0.0, 3.0, np.pi / 2]] * 6)
    gt = np.array([[-20.0, -20.0, 0.0]] * 6)
    assert bev_collision(plan, gt, scene, convention="rotated").all()
    assert not bev_collision(plan, gt, scene, convention="uniad").any()
    # and one at x = 2.25 (cells 1.75 ... 2.75): only the aligned box reaches it
    car2 = car.model_copy(update={"box": (2.25, 3.0, 0.0, 1.0, 1.0),
                                  "future": _car_future(2.25, 3.0)})  # fmt: skip
    scene2 = SceneFacts(objects=[car2], objects_tracked=True)
    assert bev_collision(plan, gt, scene2, convention="uniad").all()
    assert not bev_collision(plan, gt, scene2, convention="rotated").any()


def test_collision_counts_every_object_present_at_each_time() -> None:
    """uniad: an object entering at step 2 and one with an annotation gap at step 1 count
    where they are annotated; rotated follows only current objects up to their first gap.
    The denominator: every tracked sample (uniad) vs samples with object futures (rotated)."""
    from autovla.eval.metrics import bev_collision, collision_applies

    plan = np.array([[8.0, 0.0, 0.0]] * 6)  # parked 8 m ahead, box x 6.46 ... 10.54
    gt = np.array([[-30.0, 0.0, 0.0]] * 6)
    gap = SceneObject(id="g", kind="vehicle", box=(30.0, 0.0, 0.0, 4.0, 2.0),
                      future=[(8.0, 0.0, 0.0), None, (8.0, 0.0, 0.0)])  # fmt: skip
    enter = FutureObject(id="e", kind="pedestrian", size=(1.0, 1.0),
                         future=[None, None, None, None, (9.0, 0.5, 0.0)])  # fmt: skip
    scene = SceneFacts(objects=[gap], future_objects=[enter], objects_tracked=True)
    uni = bev_collision(plan, gt, scene, convention="uniad")
    assert uni.tolist() == [True, False, True, False, True, False]
    rot = bev_collision(plan, gt, scene, convention="rotated")
    assert rot.tolist() == [True, False, False, False, False, False]
    empty = SceneFacts(objects_tracked=True)
    assert collision_applies(empty, "uniad") and not collision_applies(empty, "rotated")
    assert not collision_applies(SceneFacts(objects=[gap]), "uniad")  # not tracked (e.g. sim)
    with pytest.raises(ValueError, match="convention"):
        bev_collision(plan, gt, scene, convention="bogus")
