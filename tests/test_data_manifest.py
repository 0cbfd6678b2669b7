import json

import numpy as np
import pytest
from pydantic import ValidationError

from autovla.data.manifest import (
    ManifestError,
    iter_samples,
    load_samples,
    manifest_files,
    rewrite_manifest,
    write_manifest,
)
from autovla.data.schema import DrivingSample

from .conftest import make_sample


def test_round_trip_is_byte_identical(small_dataset, tmp_path):
    original = (small_dataset / "manifest.jsonl").read_bytes()
    again = tmp_path / "again"
    write_manifest(again, iter_samples(small_dataset))
    assert (again / "manifest.jsonl").read_bytes() == original


def test_streams_and_filters_split(small_dataset):
    it = iter_samples(small_dataset, split="val")
    assert next(it).id == "s0004"  # a generator: nothing loaded before asked
    assert [s.id for s in load_samples(small_dataset, "train")] == [f"s{i:04d}" for i in range(4)]


def test_shards_are_read_in_order(tmp_path):
    write_manifest(tmp_path / "manifest-00001.jsonl", [make_sample(2)])
    write_manifest(tmp_path / "manifest-00000.jsonl", [make_sample(1)])
    assert [s.id for s in iter_samples(tmp_path)] == ["s0001", "s0002"]
    assert len(manifest_files(tmp_path)) == 2


def test_atomic_write_keeps_old_file_on_error(small_dataset):
    before = (small_dataset / "manifest.jsonl").read_bytes()

    def boom():
        yield make_sample(9)
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_manifest(small_dataset, boom())
    assert (small_dataset / "manifest.jsonl").read_bytes() == before
    assert not list(small_dataset.glob(".manifest*"))  # no temporary file left behind


def test_rewrite_is_atomic_and_counts_changes(small_dataset):
    def add_reasoning(s):
        return s.model_copy(update={"reasoning": "why"}) if s.complex else s

    assert rewrite_manifest(small_dataset, add_reasoning) == 3
    assert rewrite_manifest(small_dataset, add_reasoning) == 0  # idempotent
    assert sum(s.reasoning == "why" for s in iter_samples(small_dataset)) == 3


@pytest.mark.parametrize(
    "mutate, field, message",
    [
        (lambda d: d.pop("ego"), "ego", "missing"),
        (lambda d: d.update(instruction="fly"), "instruction", "turn left"),
        (lambda d: d["future"].pop(), "future", "10 poses"),
        (lambda d: d["history"][0].append(1.0), "history.0", ""),
        (lambda d: d["ego"].update(vx=float("nan")), "ego.vx", "finite"),
        (lambda d: d["cameras"].update(rear=["x.png"]), "cameras", "unknown camera"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, mutate, field, message):
    d = json.loads(make_sample(0).model_dump_json(exclude_none=True))
    mutate(d)
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps(d, allow_nan=True) + "\n")
    with pytest.raises(ManifestError) as e:
        list(iter_samples(tmp_path))
    err = e.value.error
    assert err.file == str(path) and err.line == 1
    assert err.field.startswith(field)
    assert message.lower() in err.message.lower() or message.lower() in str(e.value).lower()


def test_nan_literal_and_malformed_json(tmp_path):
    line = make_sample(0).model_dump_json().replace('"vx":2.0', '"vx":NaN')
    (tmp_path / "manifest.jsonl").write_text(line + "\n{not json\n")
    from autovla.data.manifest import check_manifest

    errors = [item for _, _, item in check_manifest(tmp_path) if isinstance(item, list)]
    assert len(errors) == 2
    assert errors[0][0].field == "ego.vx" and "finite" in errors[0][0].message
    assert "malformed JSON" in errors[1][0].message


def test_duplicate_ids_are_errors(tmp_path):
    write_manifest(tmp_path, [make_sample(1), make_sample(1)])
    with pytest.raises(ManifestError, match="duplicate id"):
        list(iter_samples(tmp_path))


def test_arrays_and_planner_view():
    s = make_sample(3)
    assert s.future_array().shape == (10, 3) and s.history_array().shape == (4, 3)
    blind = s.without_answer()
    assert blind.future is None and blind.reasoning is None
    with pytest.raises(ValueError, match="no future"):
        blind.future_array()
    assert np.isclose(s.ego.speed, 5.0)


def test_object_kind_is_checked():
    d = json.loads(make_sample(0).model_dump_json())
    d["scene"]["objects"][0]["kind"] = "dragon"
    with pytest.raises(ValidationError, match="unknown object kind"):
        DrivingSample.model_validate(d)
