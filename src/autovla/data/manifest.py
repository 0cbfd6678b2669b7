"""Dataset manifests: JSON Lines, one DrivingSample per line.

Why JSON Lines and not Parquet: samples are nested and ragged (scene objects, rated
trajectories, free text), a reader streams them line by line with the standard library, an
error can name its line number, shards concatenate with `cat`, and a diff is readable.
Images stay as files beside the manifest.

A dataset is a directory holding `manifest.jsonl` or shards `manifest-*.jsonl` (read in
name order), optional `dataset.json` (free-form info) and the image files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from autovla.data.schema import DrivingSample
from autovla.io import atomic_path

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_GLOB = "manifest*.jsonl"


@dataclass(frozen=True)
class RecordError:
    """One problem in one record: where it is and what is wrong."""

    file: str
    line: int
    record: str | None  # the record id when it could be read
    field: str  # dotted path, "" for the whole record
    message: str

    def __str__(self) -> str:
        rec = f" (id {self.record!r})" if self.record else ""
        fld = f" field {self.field!r}:" if self.field else ""
        return f"{self.file}:{self.line}{rec}:{fld} {self.message}"


class ManifestError(ValueError):
    """A manifest record that cannot be used."""

    def __init__(self, error: RecordError):
        super().__init__(str(error))
        self.error = error


def sample_to_line(sample: DrivingSample) -> str:
    """The canonical JSON line of a sample (no trailing newline); same sample, same bytes."""
    data = sample.model_dump(mode="json", exclude_none=True)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def parse_line(line: str, file: str = "<string>", lineno: int = 0) -> DrivingSample:
    """Parse one manifest line; errors become ManifestError naming file, line, id and field."""
    errors = list(_line_errors(line, file, lineno))
    if errors:
        raise ManifestError(errors[0])
    return DrivingSample.model_validate_json(line)


def _line_errors(line: str, file: str, lineno: int) -> Iterator[RecordError]:
    try:
        # NaN/Infinity literals parse here so the schema can name the field they sit in.
        raw = json.loads(line)
    except ValueError as e:
        yield RecordError(file, lineno, None, "", f"malformed JSON: {e}")
        return
    if not isinstance(raw, dict):
        yield RecordError(file, lineno, None, "", "a record must be a JSON object")
        return
    rid = raw.get("id") if isinstance(raw.get("id"), str) else None
    try:
        DrivingSample.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"]
            if err["type"] == "missing":
                msg = "missing required field"
            elif err["type"] == "extra_forbidden":
                msg = "unknown field"
            yield RecordError(file, lineno, rid, loc, msg)


def manifest_files(path: str | os.PathLike) -> list[Path]:
    """The manifest file(s) of a dataset directory, or the file itself."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"dataset not found: {p}")
    files = sorted(f for f in p.glob(MANIFEST_GLOB) if f.is_file())
    if not files:
        raise FileNotFoundError(f"no {MANIFEST_GLOB} in {p}")
    return files


def dataset_root(path: str | os.PathLike) -> Path:
    """The directory that image paths are relative to."""
    p = Path(path)
    return p.parent if p.is_file() else p


def iter_samples(
    path: str | os.PathLike, split: str | None = None, *, check_duplicates: bool = True
) -> Iterator[DrivingSample]:
    """Stream samples from a dataset directory or manifest file, failing on the first bad record."""
    seen: set[str] = set()
    for file in manifest_files(path):
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                sample = parse_line(line, str(file), lineno)
                if check_duplicates:
                    if sample.id in seen:
                        raise ManifestError(
                            RecordError(str(file), lineno, sample.id, "id", "duplicate id")
                        )
                    seen.add(sample.id)
                if split is None or sample.split == split:
                    yield sample


def load_samples(path: str | os.PathLike, split: str | None = None) -> list[DrivingSample]:
    """All samples of a (small) dataset in memory; use iter_samples for big ones."""
    return list(iter_samples(path, split))


def check_manifest(
    path: str | os.PathLike,
) -> Iterator[tuple[str, int, list[RecordError] | DrivingSample]]:
    """(file, line, errors or sample) for every record: all problems, not only the first.

    Keeps only the ids seen so far in memory (for the duplicate check).
    """
    seen: dict[str, tuple[str, int]] = {}
    for file in manifest_files(path):
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                errors = list(_line_errors(line, str(file), lineno))
                if errors:
                    yield str(file), lineno, errors
                    continue
                sample = DrivingSample.model_validate_json(line)
                if sample.id in seen:
                    first_file, first_line = seen[sample.id]
                    dup = RecordError(
                        str(file),
                        lineno,
                        sample.id,
                        "id",
                        f"duplicate id (first at {first_file}:{first_line})",
                    )
                    yield str(file), lineno, [dup]
                    continue
                seen[sample.id] = (str(file), lineno)
                yield str(file), lineno, sample


class ManifestWriter:
    """Write samples to a manifest atomically: the file appears only when closed cleanly."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.suffix != ".jsonl":
            self.path = self.path / MANIFEST_NAME
        self._ctx = atomic_path(self.path)
        self._file: IO[str] | None = None
        self.count = 0

    def __enter__(self) -> ManifestWriter:
        tmp = self._ctx.__enter__()
        self._file = open(tmp, "w", encoding="utf-8")
        return self

    def write(self, sample: DrivingSample) -> None:
        assert self._file is not None, "use ManifestWriter as a context manager"
        self._file.write(sample_to_line(sample))
        self._file.write("\n")
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._ctx.__exit__(exc_type, exc, tb)


def write_manifest(path: str | os.PathLike, samples: Iterable[DrivingSample]) -> Path:
    """Write samples to `path` (a .jsonl file or a dataset directory); returns the file."""
    with ManifestWriter(path) as w:
        for s in samples:
            w.write(s)
    return w.path


def rewrite_manifest(path: str | os.PathLike, update) -> int:
    """Apply `update(sample) -> sample` to every record of each manifest file, atomically.

    Streams, so memory stays bounded; returns the number of records changed.
    """
    changed = 0
    for file in manifest_files(path):
        with ManifestWriter(file) as w, open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                sample = parse_line(line, str(file), lineno)
                new = update(sample)
                if new is not sample and sample_to_line(new) != sample_to_line(sample):
                    changed += 1
                w.write(new)
    return changed
