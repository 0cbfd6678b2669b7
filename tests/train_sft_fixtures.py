"""Cached fixtures for the SFT tests: a tiny AutoVLA directory, a codebook, a small dataset.

Built once per test process (the tokenizer training takes seconds); tests copy, never mutate.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
import yaml

from autovla.data.manifest import write_manifest
from tests.conftest import make_sample

REASONING = (
    "Scene: a straight road in daylight.\nCritical objects: a vehicle ahead in the ego lane.\n"
    "Intent: keep the lane.\nBest action: move forward with a constant speed."
)


def codebook(shift: float = 0.0):
    from autovla.tokenizer import Codebook
    from autovla.tokenizer.contours import token_contours

    grid = [
        [dx + shift, dy, 0.1 * dy]
        for dx in torch.linspace(0, 12, 16).tolist()
        for dy in (-0.5, 0.0, 0.5)
    ]
    return Codebook(token_contours(torch.tensor(grid), 4.8, 2.0))


@functools.lru_cache(maxsize=1)
def workspace() -> Path:
    """tmp dir with model/ (tiny AutoVLA), codebook.safetensors, other-codebook.safetensors, ds/."""
    from autovla.model.checkpoint import build_model

    root = Path(tempfile.mkdtemp(prefix="autovla-sft-test-"))
    cb = codebook()
    cb.save(root / "codebook.safetensors")
    codebook(shift=0.3).save(root / "other-codebook.safetensors")
    build_model("tiny", cb, seed=0).save_pretrained(root / "model")
    write_dataset(root / "ds", 14, 10, "val")
    return root


def write_dataset(ds: Path, n: int, n_train: int, other_split: str) -> None:
    """n samples (the first n_train in train, the rest in other_split); complex ones reason."""
    samples = []
    for i in range(n):
        s = make_sample(i, ds, split="train" if i < n_train else other_split)
        if s.complex:
            s = s.model_copy(update={"reasoning": REASONING})
        samples.append(s)
    write_manifest(ds, samples)


def write_config(path: Path, out: Path, **sections) -> Path:
    """A YAML config on the cached workspace; `sections` update the defaults section-wise."""
    ws = workspace()
    cfg = {
        "model": {"path": str(ws / "model")},
        "data": {"datasets": [{"path": str(ws / "ds")}], "num_workers": 0},
        "optim": {"lr": 1.0e-3, "warmup_steps": 1},
        "sft": {"lambda_cot": 2.0, "batch_size": 2, "grad_accum": 1},
        "train": {"max_steps": 2, "device": "cpu", "freeze_vision": True},
        "output": {"dir": str(out), "progress": False, "log_every": 1},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path.write_text(yaml.safe_dump(cfg))
    return path
