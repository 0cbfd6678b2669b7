"""Shared test fixtures: small driving datasets built on the fly (no network, no real data)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autovla.data.manifest import write_manifest
from autovla.data.schema import STANDARD_CAMERAS, DrivingSample, EgoState, SceneFacts, SceneObject

# One torch thread per test process (unless OMP_NUM_THREADS says otherwise): the tests' tiny
# models run faster on one, and two busy OpenMP threads per process fight over a shared
# 2-core machine (the suite took 3 min 11 s with torch's default of 2, 1 min 53 s with 1).
# Subprocesses (the demo, DDP launches, CLI runs) inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def make_sample(i: int, root: Path | None = None, split: str = "train") -> DrivingSample:
    """A valid sample driving straight at speed 2 + i; writes its images under root if given."""
    v = 2.0 + i
    cameras = {}
    for cam in STANDARD_CAMERAS:
        frames = [f"images/{i:04d}/{cam}_{t}.png" for t in range(4)]
        cameras[cam] = frames
        if root is not None:
            for t, rel in enumerate(frames):
                p = root / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (28, 28), (10 * t, 40, 90)).save(p)
    hist = [(-v * 0.5 * k, 0.0, 0.0) for k in (3, 2, 1, 0)]
    fut = [(v * 0.5 * (k + 1), 0.0, 0.0) for k in range(10)]
    return DrivingSample(
        id=f"s{i:04d}",
        source="synthetic",
        split=split,
        cameras=cameras,
        ego=EgoState(vx=v),
        instruction="go straight",
        history=hist,
        future=fut,
        scenario_type="free_cruise" if i % 2 else "car_following",
        complex=bool(i % 2 == 0),
        scene=SceneFacts(
            objects=[SceneObject(id="car1", kind="vehicle", box=(12.0, 0.0, 0.0, 4.5, 1.9))],
            traffic_light="none",
        ),
        meta={"note": "fixture"},
    )


def free_port() -> int:
    """A loopback port nobody holds now (for `accelerate launch --main_process_port`: tests on a
    shared machine must not all use the default one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    samples = [make_sample(i, root, split="train" if i < 4 else "val") for i in range(6)]
    write_manifest(root, samples)
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
