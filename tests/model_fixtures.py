"""Shared, cached fixtures for the model tests: a tiny AutoVLA and a small image dataset.

Built once per test process (lru_cache) because the tokenizer training and model build take
a few seconds; tests must not mutate them (save copies instead).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from autovla.data.manifest import write_manifest
from autovla.data.schema import STANDARD_CAMERAS, DrivingSample, EgoState

NUM_ACTIONS = 64
INSTRUCTIONS = ("go straight", "turn left", "unknown")


def tiny_codebook(k: int = NUM_ACTIONS, seed: int = 0):
    from autovla.tokenizer import Codebook
    from autovla.tokenizer.contours import token_contours

    g = torch.Generator().manual_seed(seed)
    ends = torch.zeros(k, 3)
    ends[1:, 0] = torch.rand(k - 1, generator=g) * 8.0
    ends[1:, 1] = (torch.rand(k - 1, generator=g) - 0.5) * 1.0
    ends[1:, 2] = (torch.rand(k - 1, generator=g) - 0.5) * 0.3
    return Codebook(token_contours(ends, 4.8, 2.0))


def sample(i: int, root: Path | None) -> DrivingSample:
    """Sample i with 224x112 frames; instructions differ so prompt lengths differ."""
    cameras = {}
    for c, cam in enumerate(STANDARD_CAMERAS):
        frames = [f"img/{i:03d}/{cam}_{t}.png" for t in range(4)]
        cameras[cam] = frames
        if root is not None:
            for t, rel in enumerate(frames):
                p = root / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (224, 112), (20 * t + 40 * i, 60 + 30 * c, 90)).save(p)
    v = 3.0 + 2.5 * i
    return DrivingSample(
        id=f"m{i:03d}",
        source="synthetic",
        split="train",
        cameras=cameras,
        ego=EgoState(vx=v, ax=0.25 * i),
        instruction=INSTRUCTIONS[i % len(INSTRUCTIONS)],
        history=[(-v * 0.5 * k, 0.0, 0.0) for k in (3, 2, 1, 0)],
        future=[(v * 0.5 * (k + 1), 0.0, 0.0) for k in range(10)],
        reasoning="Scene: a straight road.\nBest action: move forward with a constant speed."
        if i % 2
        else None,
    )


@functools.lru_cache(maxsize=1)
def dataset() -> tuple[Path, list[DrivingSample]]:
    root = Path(tempfile.mkdtemp(prefix="autovla-model-test-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    samples = [sample(i, root) for i in range(3)]
    write_manifest(root, samples)
    return root, samples


@functools.lru_cache(maxsize=1)
def tiny_vla():
    """Tiny random AutoVLA; action-token rows get distinct noise so greedy choices differ."""
    from autovla.model.checkpoint import build_model

    vla = build_model("tiny", tiny_codebook(), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in (
            vla.model.get_input_embeddings().weight,
            vla.model.get_output_embeddings().weight,
        ):
            rows = w[vla.action_start : vla.action_end]
            rows += 0.5 * torch.randn(rows.shape, generator=g)
    return vla


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread, above all on a shared, loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
