"""`autovla data metric-cache navsim`: a metric cache for every converted NAVSIM scene.

Units are logs (one pickle read per log); they run through the converters' runner
(`autovla.data.sources.runner`: shards, workers, `--skip-bad`, progress, summary). Each scene's
cache is written to `metric_cache/<log>/<token>.npz` under the dataset root; a unit is done
when all its scenes have one, and a rerun rebuilds only the missing ones. At the end the
dataset's manifests are rewritten (atomically, under a lock so shards may finish together)
with `scoring` set for every sample whose cache exists.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from autovla.data.manifest import dataset_root, iter_samples, rewrite_manifest
from autovla.data.scene_filter import in_filter, scene_token
from autovla.data.schema import DrivingSample
from autovla.data.sources.runner import ConvertError, Filtered, Unit
from autovla.io import file_lock
from autovla.paths import name_problem
from autovla.scoring.cache import MetricCacheError
from autovla.scoring.navsim_cache import (
    CURRENT,
    SceneError,
    build_cache,
    cache_relpath,
    scene_inputs,
    scene_window,
)
from autovla.scoring.nuplan_map import MapError, MapStore
from autovla.scoring.route import RouteError

CACHE_DIR = "metric_cache"
LOCK = ".metric-cache.lock"


def is_navsim(sample: DrivingSample) -> bool:
    return sample.source == "navsim"


class MetricCacheJob:
    """Callable over units (one log each): builds and writes the caches of its scenes."""

    def __init__(
        self,
        logs: str | os.PathLike,
        maps: str | os.PathLike,
        data: str | os.PathLike,
        scene_filter: set[str] | None = None,
        trust_pickles: bool = False,
    ):
        self.logs = Path(logs).resolve()
        self.maps = MapStore(maps)
        self.data = Path(data)
        self.root = dataset_root(data)
        self.scene_filter = scene_filter
        self.trust_pickles = trust_pickles
        if not self.logs.is_dir():
            raise FileNotFoundError(f"log directory not found: {self.logs}")
        if not Path(maps).is_dir():
            raise FileNotFoundError(f"maps directory not found: {maps}")
        self.log_files: dict[str, list[Path]] = defaultdict(list)
        for f in sorted(self.logs.rglob("*.pkl")):
            if f.resolve().is_relative_to(self.logs):  # no symlink escapes
                self.log_files[f.stem].append(f)
        self.locations: set[str] = set()

    def units(self) -> list[Unit]:
        """One unit per log: (log name, [(sample id, scene token), ...])."""
        by_log: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for s in iter_samples(self.data):
            if not is_navsim(s) or not in_filter(s, self.scene_filter):
                continue
            meta = s.meta or {}
            by_log[str(meta.get("log_name") or "")].append((s.id, scene_token(s)))
            if meta.get("map_location"):
                self.locations.add(str(meta["map_location"]))
        return [
            Unit(i, name or "no-log-name", (name, by_log[name]))
            for i, name in enumerate(sorted(by_log))
        ]

    def cache_file(self, log_name: str, token: str) -> Path:
        return self.root / cache_relpath(log_name, token)

    def done(self, unit: Unit) -> bool:
        log_name, items = unit.payload  # type: ignore[misc]
        return bool(log_name) and all(self.cache_file(log_name, t).is_file() for _, t in items)

    def preload(self) -> None:
        """Read the maps the samples name before workers fork (they then share them)."""
        for loc in sorted(self.locations):
            with contextlib.suppress(MapError):  # reported per scene later
                self.maps.get(loc)

    def __call__(self, unit: Unit) -> Iterator[str | ConvertError | Filtered]:
        from autovla.data.sources.navsim import load_log

        log_name, items = unit.payload  # type: ignore[misc]
        if not log_name:
            for sid, _ in items:
                yield ConvertError(
                    self.data,
                    sid,
                    "meta.log_name",
                    "missing: the sample does not say which log it comes from",
                )
            return
        files = self.log_files.get(log_name, [])
        if len(files) != 1:
            why = "not found" if not files else f"ambiguous ({', '.join(map(str, files))})"
            for sid, _ in items:
                yield ConvertError(self.logs, sid, "meta.log_name", f"log {log_name}.pkl {why}")
            return
        path = files[0]
        named = []
        for sid, tok in items:  # tokens become file names: plain names only
            problem = name_problem(tok)
            if problem is None:
                named.append((sid, tok))
            else:
                yield ConvertError(self.data, sid, "meta.scene_token", f"scene token {problem}")
        todo = [(sid, tok) for sid, tok in named if not self.cache_file(log_name, tok).is_file()]
        if len(todo) < len(items):
            yield Filtered("already cached", len(items) - len(todo))
        if not todo:
            return
        frames = load_log(path, self.trust_pickles)
        for sid, tok in todo:
            try:
                window = scene_window(frames, tok)
                location = window[CURRENT].get("map_location")
                if not location:
                    raise SceneError("map_location", "missing")
                try:
                    m = self.maps.get(str(location))
                except MapError as e:
                    raise SceneError("map_location", f"map of {location!r}: {e}") from None
                cache = build_cache(scene_inputs(window, m))
                cache.save(self.cache_file(log_name, tok))
            except (SceneError, RouteError) as e:
                yield ConvertError(path, tok, e.field, str(e))
                continue
            except MetricCacheError as e:  # inconsistent values (its message names the field)
                yield ConvertError(path, tok, "", f"metric cache: {e}")
                continue
            yield sid


def attach_caches(data: str | os.PathLike) -> int:
    """Set `scoring` on every NAVSIM sample whose metric cache exists; returns how many
    changed. Every manifest file is rewritten atomically, under a lock shared by shards."""
    root = dataset_root(data)

    def update(s: DrivingSample) -> DrivingSample:
        if not is_navsim(s):
            return s
        log_name = str((s.meta or {}).get("log_name") or "")
        if not log_name:
            return s
        if name_problem(scene_token(s)) is not None:  # never cached (the job reported it)
            return s
        rel = cache_relpath(log_name, scene_token(s))
        if s.scoring == rel or not (root / rel).is_file():
            return s
        return s.model_copy(update={"scoring": rel})

    with file_lock(root / CACHE_DIR / LOCK):
        return rewrite_manifest(data, update)
