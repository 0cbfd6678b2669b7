"""Training data: a seeded, infinite stream mixing several datasets, sharded by rank and worker.

Why a stream: datasets of any size are read line by line from their manifests, never held in
memory. Shuffling uses a bounded buffer per dataset and pass (a fresh seed each pass).

Determinism: every process and worker computes the same global sequence from the seed (which
dataset each item comes from, and the shuffled order), then keeps only its own items: global
item g belongs to rank g % world_size; a rank's items are cut into batches, and batch k is
built by DataLoader worker k % num_workers. The DataLoader takes batches from its workers
round-robin, so a rank sees the same batches in the same order whatever the worker count,
and resuming after S global items just skips them (parsing only, no images).
"""

from __future__ import annotations

import functools
import math
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from autovla.data.manifest import dataset_root, iter_samples
from autovla.data.scene_filter import in_filter, read_scene_filter
from autovla.data.schema import DrivingSample


class EmptyDatasetError(ValueError):
    """A dataset (or its requested split) holds no samples."""


@dataclass(frozen=True)
class Source:
    path: str
    weight: float = 1.0
    split: str | None = "train"
    scene_filter: str | None = None  # scene tokens to keep (data/scene_filter.py)
    field: str = ""  # the config entry, e.g. "data.datasets[1]", for error messages


@dataclass
class Item:
    sample: DrivingSample
    root: str
    source: int  # index of the dataset it came from


def sources_of(entries: Sequence[Any], field: str = "data.datasets") -> list[Source]:
    """Config dataset entries (path, weight, split, scene_filter) as stream sources; `field`
    is where they are in the config (named by errors)."""
    return [
        Source(e.path, getattr(e, "weight", 1.0), e.split, e.scene_filter, f"{field}[{i}]")
        for i, e in enumerate(entries)
    ]


class DatasetNotFoundError(FileNotFoundError):
    """A configured dataset path that does not exist (the message names the config field)."""


def check_sources(sources: Sequence[Source]) -> None:
    """Every dataset exists and has a sample in its split: checked before a slow model load."""
    for s in sources:
        _check_path(s)
        if next(iter(source_samples(s)), None) is None:
            raise EmptyDatasetError(f"dataset {_describe(s)} has no samples")


def _check_path(src: Source) -> None:
    if not Path(src.path).exists():
        where = f"{src.field}.path: " if src.field else ""
        raise DatasetNotFoundError(f"{where}dataset not found: {src.path}")


@functools.lru_cache(maxsize=16)
def _tokens(path: str) -> frozenset[str]:
    return frozenset(read_scene_filter(path))


def source_samples(src: Source) -> Iterator[DrivingSample]:
    """One pass over a source's samples: its split, then its scene filter."""
    tokens = None
    if src.scene_filter is not None:
        try:
            tokens = set(_tokens(src.scene_filter))
        except (OSError, ValueError) as e:
            raise type(e)(f"{src.field}.scene_filter: {e}") from None
    for sample in iter_samples(src.path, src.split):
        if in_filter(sample, tokens):
            yield sample


def _describe(src: Source) -> str:
    split = f"split {src.split!r}" if src.split else ""
    scenes = f"scene filter {src.scene_filter}" if src.scene_filter else ""
    detail = ", ".join(x for x in (split, scenes) if x)
    where = f"{src.field}: " if src.field else ""
    return f"{where}{src.path}" + (f" ({detail})" if detail else "")


def _shuffled(samples: Iterator[DrivingSample], buffer: int, rng: np.random.Generator):
    """Bounded-buffer shuffle: emit a random element of the buffer each time it is full."""
    buf: list[DrivingSample] = []
    for s in samples:
        buf.append(s)
        if len(buf) >= buffer:
            i = int(rng.integers(len(buf)))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)  # in-place permutation of the tail
    yield from buf


def _cycle(src: Source, index: int, seed: int, buffer: int) -> Iterator[DrivingSample]:
    """Endless passes over one dataset, each pass shuffled with its own seed."""
    epoch = 0
    while True:
        rng = np.random.default_rng([seed, 1, index, epoch])
        count = 0
        for s in _shuffled(source_samples(src), buffer, rng):
            count += 1
            yield s
        if count == 0:
            raise EmptyDatasetError(f"dataset {_describe(src)} has no samples")
        epoch += 1


def global_stream(sources: Sequence[Source], seed: int, buffer: int) -> Iterator[Item]:
    """The infinite mixed sequence every process agrees on."""
    if not sources:
        raise EmptyDatasetError("no training datasets given")
    weights = np.asarray([s.weight for s in sources], dtype=np.float64)
    if not np.all(weights > 0):
        raise ValueError(f"dataset weights must be positive, got {weights.tolist()}")
    probs = weights / weights.sum()
    roots = [str(dataset_root(s.path)) for s in sources]
    streams = [_cycle(s, i, seed, buffer) for i, s in enumerate(sources)]
    pick = np.random.default_rng([seed, 0])
    while True:
        d = int(pick.choice(len(sources), p=probs)) if len(sources) > 1 else 0
        yield Item(next(streams[d]), roots[d], d)


class MixedStream(IterableDataset):
    """This process's share of the global stream; use with DataLoader(batch_size=batch_size)."""

    def __init__(
        self,
        sources: Sequence[Source],
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 256,
        skip: int = 0,
        limit: int | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.sources = list(sources)
        self.seed, self.batch_size = seed, batch_size
        self.rank, self.world_size = rank, world_size
        self.buffer, self.skip, self.limit = shuffle_buffer, skip, limit
        for s in self.sources:  # fail early, in the main process, on a missing path
            _check_path(s)

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        end = None if self.limit is None else self.skip + self.limit
        for g, item in enumerate(global_stream(self.sources, self.seed, self.buffer)):
            if end is not None and g >= end:
                return
            if g < self.skip:
                continue
            k = g - self.skip
            if k % self.world_size != self.rank:
                continue
            if (k // self.world_size // self.batch_size) % nw != wid:
                continue
            yield item


def count_samples(sources: Sequence[Source]) -> int:
    """Samples over all sources (one parsing pass); errors on an empty one."""
    total = 0
    for s in sources:
        n = sum(1 for _ in source_samples(s))
        if n == 0:
            raise EmptyDatasetError(f"dataset {_describe(s)} has no samples")
        total += n
    return total


def reasoning_scan(sources: Sequence[Source], limit: int = 20_000) -> tuple[int, bool]:
    """(samples read, whether any has reasoning): at most `limit` per source, stopping at the
    first sample with reasoning. Dual-thinking SFT on data without any learns fast answers only."""
    read = 0
    for s in sources:
        for i, sample in enumerate(source_samples(s)):
            if i >= limit:
                break
            read += 1
            if sample.reasoning:
                return read, True
    return read, False


def steps_for_epochs(epochs: float, samples: int, per_step: int) -> int:
    return max(1, math.ceil(epochs * samples / per_step))


def load_items(sources: Sequence[Source], limit: int, seed: int = 0) -> list[Item]:
    """Up to `limit` samples drawn evenly from all sources (seeded reservoir sampling, one
    streaming pass, kept in file order): a fixed validation set that spans many scenes."""
    rng = np.random.default_rng([seed, 2])
    chosen: list[tuple[int, Item]] = []
    seen = 0
    for i, s in enumerate(sources):
        _check_path(s)
        root = str(dataset_root(s.path))
        for sample in source_samples(s):
            if len(chosen) < limit:
                chosen.append((seen, Item(sample, root, i)))
            else:
                j = int(rng.integers(seen + 1))
                if j < limit:
                    chosen[j] = (seen, Item(sample, root, i))
            seen += 1
    if not chosen and sources:
        raise EmptyDatasetError(
            "validation datasets have no samples: " + ", ".join(_describe(s) for s in sources)
        )
    return [item for _, item in sorted(chosen, key=lambda x: x[0])]


def worker_init(_: int) -> None:
    # Workers decode images and run the codebook; one thread each avoids oversubscription.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group, and SLURM signals every process of a job: only
    # the main process reacts (it writes the checkpoint and then shuts the workers down), so
    # a worker never dies first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
