"""Importing the reference pickle safely, and refusing hostile pickles."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from autovla.tokenizer import CodebookError, UnsafePickleError, import_reference
from autovla.tokenizer.reference import load_reference_contours, safe_unpickle

REFERENCE = Path(__file__).resolve().parents[2] / "shared/data/reference_codebook/agent_vocab.pkl"
needs_reference = pytest.mark.skipif(not REFERENCE.is_file(), reason="reference codebook absent")


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"token_all": {"veh": _Hostile(marker)}}))
    with pytest.raises(UnsafePickleError, match=r"refusing to load (posix|os)\.system"):
        import_reference(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        np.array([object(), 1], dtype=object),  # object arrays smuggle arbitrary objects
        {"token_all": {"veh": np.ma.masked_array([1.0])}},  # array subclasses
        {"x": {1, 2}.__class__},  # a class object (builtins.set)
    ],
)
def test_other_globals_are_refused(payload):
    with pytest.raises(UnsafePickleError):
        safe_unpickle(pickle.dumps(payload))


def test_plain_arrays_and_containers_load(tmp_path):
    veh = np.random.default_rng(0).normal(size=(3, 6, 4, 2)).astype(np.float32)
    data = {"token_all": {"veh": veh, "ped": [1, 2.0, "x", None]}}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    assert np.array_equal(load_reference_contours(path), veh)
    path.write_bytes(pickle.dumps({"token_all": {"ped": veh}}))
    with pytest.raises(CodebookError, match="no 'veh' tokens"):
        load_reference_contours(path)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CodebookError, match=r"ok\.pkl"):
        load_reference_contours(path)


@needs_reference
def test_reference_imports_and_roundtrips(tmp_path):
    cb = import_reference(REFERENCE)
    assert cb.size == 2048 and cb.contours.shape == (2048, 6, 4, 2)
    assert cb.end_poses[0].abs().max() < 0.01  # token 0 is no motion
    # corners are FL, FR, RR, RL: heading rear-left -> front-left is ~0 at the first contour
    first = cb.contours[:, 0]
    assert torch.allclose(first[:, 0], torch.tensor([2.4, 1.0]).expand(2048, 2), atol=1e-4)
    ids = torch.randint(0, 2048, (32, 10), generator=torch.Generator().manual_seed(0))
    assert torch.equal(cb.encode(cb.decode(ids)), ids)
    path = cb.save(tmp_path / "ref.safetensors")
    assert torch.equal(type(cb).load(path).contours, cb.contours)


@needs_reference
def test_reference_straight_constant_speed_within_5cm():
    cb = import_reference(REFERENCE)
    speeds = np.linspace(0.0, 15.0, 31)  # 0-54 km/h, well covered by the data
    traj = np.zeros((len(speeds), 10, 3))
    traj[..., 0] = speeds[:, None] * 0.5 * np.arange(1, 11)
    rec = cb.decode(cb.encode(traj)).numpy()
    assert np.linalg.norm(rec[..., :2] - traj[..., :2], axis=-1).max() < 0.05


@needs_reference
def test_reference_batched_equals_loop():
    from autovla.tokenizer.synthetic import bicycle_trajectories

    cb = import_reference(REFERENCE)
    traj = bicycle_trajectories(24, steps=10, seed=7)
    assert torch.equal(cb.encode(traj), cb.encode_reference(traj))


@pytest.mark.parametrize(
    ("veh", "message"),
    [
        (
            np.array(["1.0"] * 48, dtype="U3").reshape(1, 6, 4, 2),
            "must hold numbers, got dtype '<U3'",
        ),
        (np.zeros((1, 6, 4, 2), dtype="S1"), "must hold numbers, got dtype '|S1'"),
        (np.zeros((1, 6, 4, 2), dtype=bool), "must hold numbers, got dtype '|b1'"),
        (np.full((1, 6, 4, 2), np.nan, np.float32), "contours contain NaN or infinite values"),
        (np.full((1, 6, 4, 2), 1e39), "contours contain NaN or infinite values"),  # float32 inf
    ],
    ids=["unicode", "bytes", "bool", "nan", "overflow"],
)
def test_reference_arrays_that_are_no_coordinates_are_named(tmp_path, veh, message):
    path = tmp_path / "agent_vocab.pkl"
    path.write_bytes(pickle.dumps({"token_all": {"veh": veh}}, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(CodebookError, match=message) as e:
        import_reference(path)
    assert str(e.value).startswith(f"{path}: token_all['veh']")
