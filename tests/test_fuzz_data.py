"""Property-based fuzzing of the data entry points: mutated manifests and converter inputs
(nuScenes tables, Waymo records, NAVSIM frames).

Each case must end in a valid result or a named error (a ValueError subclass naming the file
and the record/line; the CLI's exit 1 without a traceback), never a traceback, a hang or a
write outside the output folder. Time is bounded per example (hypothesis `deadline`) and per
file (few examples, derandomized); memory by small inputs and an address-space limit
(RLIMIT_AS: the process's current size + 1 GiB) while each test runs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from autovla.cli import app
from autovla.data.manifest import ManifestError, iter_samples
from autovla.data.schema import DrivingSample
from autovla.data.sources.runner import ConvertError, ImageOptions, run_conversion
from autovla.data.stats import dataset_stats
from autovla.data.validate import validate_dataset
from tests.conftest import make_sample

# AUTOVLA_FUZZ_EXAMPLES=2000 runs a longer, randomized sweep (not part of the suite)
EXAMPLES = int(os.environ.get("AUTOVLA_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(
    max_examples=EXAMPLES or 25,
    deadline=3000,  # ms per example: a hang or a runaway loop fails here
    derandomize=EXAMPLES is None,  # the same examples on every run of the suite
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
runner = CliRunner()

# --- value strategies: what a hostile or broken file may hold where data is expected -----
HOSTILE_TEXT = [
    "",
    "../x",
    "../../../../x.jpg",
    "a/../../b",
    "/etc/passwd",
    "..",
    "[red]x[/]",
    "[/]",
    "x\x00y",
    "NaN",
    "é" * 3,
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(HOSTILE_TEXT),
)
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12,
)


@contextlib.contextmanager
def address_space_bound(extra: int = 2**30):
    """Limit the address space to its current size + `extra` (a runaway allocation becomes a
    MemoryError, which fails the test, instead of starving the machine)."""
    try:
        import resource

        size = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmSize:")
        )
    except (ImportError, OSError, StopIteration):  # not Linux: sizes are bounded anyway
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + extra if hard == resource.RLIM_INFINITY else min(hard, size + extra)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(autouse=True)
def _bounded_memory():
    with address_space_bound():
        yield


def paths_of(doc, prefix=()):
    """Every (path) into a JSON-like document, containers included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths_of(v, (*prefix, i))
    return out


def mutate_doc(data, doc, values=json_values):
    """Replace, delete or duplicate one node of `doc` (in place); returns the document."""
    path = data.draw(st.sampled_from(paths_of(doc)[1:] or [()]))
    if not path:
        return data.draw(values)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    action = data.draw(st.sampled_from(["replace", "replace", "delete"]))
    if action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(values)
    return doc


def snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def assert_named(e: BaseException, file_hint: str) -> None:
    """A named error: a ValueError subclass whose message says where (file, record/line)."""
    assert isinstance(e, ValueError), f"{type(e).__name__}: {e}"
    assert file_hint in str(e), str(e)


# ---------------------------------------------------------------------------- manifests
BASE = json.loads(make_sample(0).model_dump_json(exclude_none=True))


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_python(data) -> None:
    doc = mutate_doc(data, copy.deepcopy(BASE))
    line = json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
    garble = data.draw(st.sampled_from(["none", "none", "truncate", "bytes", "nest"]))
    if garble == "truncate":
        line = line[: data.draw(st.integers(0, len(line)))]
    elif garble == "bytes":
        at = data.draw(st.integers(0, len(line)))
        line = line[:at] + data.draw(st.binary(min_size=1, max_size=6)) + line[at:]
    elif garble == "nest":
        depth = data.draw(st.integers(30, 5000))
        line = b'{"meta": ' + b"[" * depth + b"]" * depth + b"}"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "manifest.jsonl"
        path.write_bytes(line.replace(b"\n", b" ") + b"\n")
        valid, errors = validate_dataset(d, check_images=False, progress=False)
        if not line.strip():  # nothing left of the record: an empty dataset
            assert valid == 0 and errors[0].file == d and "no records" in errors[0].message
            return
        assert valid + len({(e.line) for e in errors}) == 1
        for e in errors:
            assert e.file == str(path) and e.line == 1 and e.message
        try:
            samples = list(iter_samples(d))
            dataset_stats(d)
        except ManifestError as e:
            assert errors and e.error.file == str(path) and e.error.line == 1
            event("named error")
        else:
            event("valid")
            assert not errors and len(samples) == 1
            # what passes the schema is plain JSON that writes and reads back the same
            again = DrivingSample.model_validate_json(samples[0].model_dump_json())
            assert again == samples[0]


@settings(FUZZ, max_examples=EXAMPLES or 12)
@given(data=st.data())
def test_fuzz_manifest_cli(data) -> None:
    doc = mutate_doc(data, copy.deepcopy(BASE))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "manifest.jsonl").write_text(json.dumps(doc, allow_nan=True) + "\n")
        for cmd in (["data", "validate", d, "--no-images"], ["data", "stats", d]):
            r = runner.invoke(app, cmd)
            assert r.exit_code in (0, 1), r.output
            assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
            assert "Traceback" not in r.output
            if r.exit_code == 1:
                assert "manifest.jsonl" in r.output or "error" in r.output


# ---------------------------------------------------------------------------- converters
def _run(conv, out: Path, skip_bad: bool):
    return run_conversion(conv.units(), conv, out, skip_bad=skip_bad, progress=False)


def _check_conversion(make, sandbox: Path, out: Path, skip_bad: bool, file_hint: str) -> None:
    before = snapshot(sandbox)
    try:
        conv = make()
        summary = _run(conv, out, skip_bad)
    except ConvertError as e:
        assert_named(e, file_hint)
        event("named error")
    except FileNotFoundError:
        event("file not found")  # a table the mutation removed: the CLI reports it as one line
    else:
        bad = sum(n for why, n in summary.skipped.items() if not why.startswith("filtered"))
        event(f"converted ({'some' if summary.written else 'no'} samples, {bad and 'some'} bad)")
        if list(out.glob("manifest*.jsonl")):
            for s in iter_samples(out):  # what was written is valid
                assert s.id
    new = snapshot(sandbox) - before
    assert all(p.is_relative_to(out) for p in new), sorted(new)


# --- NAVSIM -------------------------------------------------------------------------------
np_values = st.one_of(
    json_values,
    st.builds(np.array, st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8)),
    st.builds(lambda n: np.full((n, 7), np.nan), st.integers(0, 3)),
    st.builds(lambda s: np.array([s]), st.sampled_from(HOSTILE_TEXT)),
)


@pytest.fixture(scope="module")
def navsim_tree(tmp_path_factory) -> tuple[Path, list[dict]]:
    from tests.test_sources_navsim import make_frames

    sandbox = tmp_path_factory.mktemp("fuzz-navsim")
    root = sandbox / "a" / "b" / "c"  # hostile ../ paths land inside the sandbox
    frames = make_frames(root)
    return sandbox, root, frames


@FUZZ
@given(data=st.data())
def test_fuzz_navsim_frames(navsim_tree, data) -> None:
    from autovla.data.sources.navsim import NavsimConverter

    sandbox, root, frames = navsim_tree
    frames = copy.deepcopy(frames[:14])
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(frames) - 1))
        frames[i] = mutate_doc(data, frames[i], np_values)
    raw = pickle.dumps(frames, protocol=pickle.HIGHEST_PROTOCOL)
    if data.draw(st.booleans()):  # a corrupt file
        at = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + data.draw(st.binary(max_size=8)) + raw[at + 1 :]
    logs = root / "navsim_logs" / "trainval"
    shutil.rmtree(root / "navsim_logs", ignore_errors=True)
    logs.mkdir(parents=True)
    (logs / "log.pkl").write_bytes(raw)
    out = Path(tempfile.mkdtemp(dir=root, prefix="out-"))
    copy_images = data.draw(st.booleans())
    try:
        images = ImageOptions(copy=copy_images)
        logs, blobs = root / "navsim_logs", root / "sensor_blobs"
        _check_conversion(
            lambda: NavsimConverter(logs, blobs, out, images=images),
            sandbox,
            out,
            data.draw(st.booleans()),
            "log.pkl",
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)


# --- nuScenes ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nuscenes_tree(tmp_path_factory):
    from tests.test_sources_nuscenes import build_tree

    sandbox = tmp_path_factory.mktemp("fuzz-nusc")
    root = sandbox / "a" / "b" / "nuscenes"
    return sandbox, root, build_tree(root)


@FUZZ
@given(data=st.data())
def test_fuzz_nuscenes_tables(nuscenes_tree, data) -> None:
    from autovla.data.sources.nuscenes import NuScenesConverter
    from tests.test_sources_nuscenes import VERSION, write_tables

    sandbox, root, tables = nuscenes_tree
    t = copy.deepcopy(tables)
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(sorted(t)))
        kind = data.draw(st.sampled_from(["row", "row", "row", "table", "cycle"]))
        if kind == "table":
            t[name] = data.draw(json_values)
        elif kind == "cycle" and isinstance(t["sample"], list) and t["sample"]:
            row = data.draw(st.sampled_from(t["sample"]))
            if isinstance(row, dict):
                row["next"] = data.draw(st.sampled_from([r.get("token") for r in tables["sample"]]))
        elif isinstance(t[name], list) and t[name]:
            i = data.draw(st.integers(0, len(t[name]) - 1))
            t[name][i] = mutate_doc(data, t[name][i])
    write_tables(root, t)
    out = Path(tempfile.mkdtemp(dir=root.parent, prefix="out-"))
    copy_images = data.draw(st.booleans())
    try:
        _check_conversion(
            lambda: NuScenesConverter(root, VERSION, out, images=ImageOptions(copy=copy_images)),
            sandbox,
            out,
            data.draw(st.booleans()),
            ".json",
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)
        write_tables(root, tables)


# --- Waymo -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def waymo_records():
    from tests.test_sources_waymo import segment

    return segment(5, step_us=500_000)


floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@FUZZ
@given(data=st.data())
def test_fuzz_waymo_records(waymo_records, data, tmp_path_factory) -> None:
    from autovla.data.sources.tfrecord import write_tfrecord
    from autovla.data.sources.waymo import WaymoConverter
    from autovla.data.sources.waymo_proto import messages

    recs = list(waymo_records)
    cls = messages()["E2EDFrame"]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(recs) - 1))
        what = data.draw(
            st.sampled_from(["context", "time", "past", "future", "pref", "image", "bytes"])
        )
        if what == "bytes":  # a garbled message (framed with a valid CRC)
            raw = bytearray(recs[i])
            for _ in range(data.draw(st.integers(1, 4)) if raw else 0):
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
            recs[i] = bytes(raw[: data.draw(st.integers(0, len(raw)))])
            continue
        try:
            m = cls.FromString(recs[i])
        except DecodeError:
            continue  # garbled by an earlier step
        if what == "context":
            m.frame.context.name = data.draw(st.sampled_from(HOSTILE_TEXT) | st.text(max_size=30))
        elif what == "time":
            m.frame.timestamp_micros = data.draw(st.integers(-(2**63), 2**63 - 1))
        elif what in ("past", "future"):
            states = m.past_states if what == "past" else m.future_states
            field = data.draw(st.sampled_from(["pos_x", "pos_y", "vel_x", "accel_y"]))
            values = data.draw(st.lists(floats, max_size=25))
            getattr(states, field)[:] = values
        elif what == "pref":
            p = m.preference_trajectories[0]
            p.preference_score = data.draw(floats)
            p.pos_x[:] = data.draw(st.lists(floats, max_size=22))
        else:
            m.frame.images[0].image = data.draw(st.binary(max_size=64))
        recs[i] = m.SerializeToString()
    with tempfile.TemporaryDirectory() as d:
        sandbox = Path(d)
        path = sandbox / "a" / "training.tfrecord"
        path.parent.mkdir()
        write_tfrecord(path, recs)
        out = sandbox / "a" / "b" / "c" / "out"
        size = (8, 4) if data.draw(st.booleans()) else None
        _check_conversion(
            lambda: WaymoConverter([path], out, images=ImageOptions(copy=bool(size), size=size)),
            sandbox,
            out,
            data.draw(st.booleans()),
            "training.tfrecord",
        )
