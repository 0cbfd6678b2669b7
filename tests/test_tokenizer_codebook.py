"""Codebook fitting, encode/decode and the safetensors format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autovla.tokenizer import Codebook, CodebookError, NotEnoughSegmentsError, fit_codebook
from autovla.tokenizer.contours import contour_pose
from autovla.tokenizer.fit import segments_from_trajectories
from autovla.tokenizer.synthetic import bicycle_trajectories


@pytest.fixture(scope="module")
def train_traj() -> np.ndarray:
    return bicycle_trajectories(3000, steps=10, seed=0)


@pytest.fixture(scope="module")
def codebook(train_traj) -> Codebook:
    return fit_codebook(
        train_traj, size=1024, tol=0.05, seed=0, progress=False, coverage_segments=2000
    )


def test_zero_motion_token_is_id_0(codebook):
    end = codebook.end_poses[0]
    assert end.abs().max() < 0.05
    still = np.zeros((4, 3))
    assert codebook.encode(still).tolist() == [0, 0, 0, 0]


def test_end_pose_from_contour_convention(codebook):
    # heading is the direction rear-left -> front-left; the pose is the corner mean
    pose = torch.tensor([[1.0, 2.0, 0.3]], dtype=torch.float64)
    from autovla.tokenizer.contours import box_contour

    assert torch.allclose(contour_pose(box_contour(pose, 4.8, 2.0)), pose)


def test_decode_encode_roundtrip_ids(codebook):
    ids = torch.randint(0, codebook.size, (64, 10), generator=torch.Generator().manual_seed(1))
    assert torch.equal(codebook.encode(codebook.decode(ids)), ids)


def test_straight_constant_speed_reconstructs():
    # A codebook fitted on straight driving reproduces any straight constant-speed plan
    # (the reference codebook is checked the same way in test_tokenizer_reference.py).
    rng = np.random.default_rng(3)
    speeds = rng.uniform(0.0, 20.0, 400)
    train = np.zeros((400, 10, 3))
    train[..., 0] = speeds[:, None] * 0.5 * np.arange(1, 11)
    cb = fit_codebook(train, size=4096, progress=False, allow_fewer=True, coverage_segments=500)
    for v in (0.0, 3.0, 8.3, 12.0, 17.7):
        traj = np.stack([v * 0.5 * np.arange(1, 11), np.zeros(10), np.zeros(10)], -1)
        err = np.linalg.norm(cb.decode(cb.encode(traj)).numpy()[:, :2] - traj[:, :2], axis=-1)
        # closed loop: the error stays bounded by about half the token spacing (~tol)
        assert err.mean() < 0.05 and err.max() < 0.065, (v, err)


def test_batched_equals_loop(codebook):
    traj = bicycle_trajectories(16, steps=6, seed=5)
    traj[::3] += np.random.default_rng(0).normal(0, 0.3, traj[::3].shape)  # off-manifold too
    assert torch.equal(codebook.encode(traj), codebook.encode_reference(traj))


def test_shapes_and_errors(codebook):
    traj = bicycle_trajectories(2, steps=3, seed=2)
    assert codebook.encode(traj).shape == (2, 3)
    assert codebook.encode(traj[0]).shape == (3,)
    assert codebook.decode(codebook.encode(traj[0])).shape == (3, 3)
    bad = traj.copy()
    bad[1, 2, 1] = np.nan
    with pytest.raises(ValueError, match="trajectory 1, step 2, field y"):
        codebook.encode(bad)
    with pytest.raises(ValueError, match="shape"):
        codebook.encode(np.zeros((2, 3, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        codebook.decode([1, 1024])
    with pytest.raises(ValueError, match="integers"):
        codebook.decode([0.5])


def test_save_load_roundtrip(codebook, tmp_path):
    path = codebook.save(tmp_path / "cb.safetensors")
    loaded = Codebook.load(path)
    assert torch.equal(loaded.contours, codebook.contours)
    assert loaded.meta["tol"] == 0.05 and loaded.meta["size"] == 1024
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary behind
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CodebookError, match=r"junk\.safetensors"):
        Codebook.load(tmp_path / "junk.safetensors")


def test_fit_is_deterministic_and_reports(train_traj, codebook):
    again = fit_codebook(
        train_traj, size=1024, tol=0.05, seed=0, progress=False, coverage_segments=2000
    )
    assert torch.equal(again.contours, codebook.contours)
    other = fit_codebook(
        train_traj, size=1024, tol=0.05, seed=1, progress=False, coverage_segments=2000
    )
    assert not torch.equal(other.contours, codebook.contours)
    assert 0.0 < codebook.meta["coverage"] <= 1.0 and 0.0 < codebook.meta["usage"] <= 1.0


def test_fit_runs_out_of_data():
    traj = np.stack([np.arange(1, 4) * 1.0, np.zeros(3), np.zeros(3)], -1)[None]
    with pytest.raises(NotEnoughSegmentsError, match="ran out after 2 of 50 tokens"):
        fit_codebook(traj, size=50, progress=False)
    cb = fit_codebook(traj, size=50, progress=False, allow_fewer=True)
    assert cb.size == 2


def test_segments_are_in_start_frame():
    traj = np.array([[[1.0, 0.0, np.pi / 2], [1.0, 1.0, np.pi / 2]]])
    seg = segments_from_trajectories(traj)
    assert np.allclose(seg, [[1.0, 0.0, np.pi / 2], [1.0, 0.0, 0.0]])


def test_decode_batched_equals_loop(codebook):
    ids = torch.randint(0, codebook.size, (5, 9), generator=torch.Generator().manual_seed(2))
    assert torch.equal(codebook.decode(ids), codebook.decode_reference(ids))


def test_token_index_is_exact_on_every_path(codebook):
    from autovla.tokenizer import matching as m
    from autovla.tokenizer.contours import box_contour

    rng = np.random.default_rng(9)
    poses = np.concatenate(
        [
            codebook.end_poses.double().numpy()[rng.integers(0, codebook.size, 300)],  # exact hits
            rng.normal([4.0, 0.0, 0.0], [3.0, 0.3, 0.05], (300, 3)),  # near the tokens
            rng.normal([4.0, 0.0, 0.0], [15.0, 8.0, 1.5], (300, 3)),  # far off: wide searches
        ]
    )
    target = box_contour(torch.from_numpy(poses), 4.8, 2.0)
    full = m._full_argmin(target, codebook._token_end_match())
    calls = {"_square": 0, "_disc": 0}

    def counted(name):
        inner = getattr(m.TokenIndex, name)

        def wrapper(self, *args):
            calls[name] += 1
            return inner(self, *args)

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        for name in calls:
            mp.setattr(m.TokenIndex, name, counted(name))
        for window in (4, 24, 200):
            for bin_size in (1, 5, 16, 64):
                index = m.TokenIndex(codebook._token_end_match(), window, bin_size)
                assert torch.equal(index.nearest(target), full), (window, bin_size)
    assert calls["_square"] and calls["_disc"]  # both fallbacks of the window were exercised


def _with_meta(src, dst, **changes) -> None:
    """Copy a codebook file with its header metadata changed (NaN written as JSON NaN)."""
    import json
    import struct

    data = src.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["autovla_codebook"])
    meta.update(changes)
    header["__metadata__"]["autovla_codebook"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"length": float("nan")}, r"'length' must be a number in \(0, 100\] m, got nan"),
        ({"length": "abc"}, r"'length' must be a number in \(0, 100\] m, got 'abc'"),
        ({"width": -2.0}, r"'width' must be a number in \(0, 100\] m, got -2.0"),
        ({"width": True}, r"'width' must be a number"),
        ({"segment_seconds": 0}, r"'segment_seconds' must be a number in \(0, 60\] s"),
        ({"tol": None}, r"'tol' must be a number"),
        ({"sub_steps": 5}, r"'sub_steps' must be 6, got 5"),
        ({"version": 2}, r"'version' 2 is not one this code reads"),
    ],
)
def test_bad_metadata_is_named(codebook, tmp_path, changes, message):
    good = codebook.save(tmp_path / "good.safetensors")
    bad = tmp_path / "bad[1].safetensors"
    _with_meta(good, bad, **changes)
    with pytest.raises(CodebookError, match=message) as e:
        Codebook.load(bad)
    assert str(e.value).startswith(str(bad))


def test_corrupt_files_are_named(codebook, tmp_path):
    from safetensors.torch import save_file

    good = codebook.save(tmp_path / "good.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    for damaged in (good[: len(good) // 2], good[:5], b"\xff" * 8 + good[8:], b""):
        bad.write_bytes(damaged)
        with pytest.raises(CodebookError, match=r"bad\.safetensors: not a readable safetensors"):
            Codebook.load(bad)
    meta = {"autovla_codebook": '{"format": "autovla-codebook", "version": 1}'}
    save_file({"contours": torch.zeros(2, 6, 4, 2, dtype=torch.int32)}, str(bad), meta)
    with pytest.raises(CodebookError, match=r"contours must be floating point, got torch\.int32"):
        Codebook.load(bad)
    save_file({"contours": torch.full((2, 6, 4, 2), 1e30)}, str(bad), meta)
    with pytest.raises(CodebookError, match="contours reach beyond 10000 m"):
        Codebook.load(bad)
