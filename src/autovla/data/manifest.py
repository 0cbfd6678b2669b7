"""Dataset manifests: JSON Lines, one DrivingSample per line.

Why JSON Lines and not Parquet: samples are nested and ragged (scene objects, rated
trajectories, free text), a reader streams them line by line with the standard library, an
error can name its line number, shards concatenate with `cat`, and a diff is readable.
Images stay as files beside the manifest.

A dataset is a directory holding `manifest.jsonl` or shards `manifest-*.jsonl` (read in
name order), optional `dataset.json` (free-form info) and the image files.

Every line is checked before it is parsed: UTF-8, at most MAX_LINE_BYTES long, JSON nested at
most MAX_JSON_DEPTH deep. A line that fails is a ManifestError naming file and line, like a
record that fails the schema, never a traceback or a parser's stack overflow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from pydantic import ValidationError

from autovla.data.schema import DrivingSample
from autovla.io import atomic_path

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_GLOB = "manifest*.jsonl"
MAX_LINE_BYTES = 16 * 2**20  # a real sample is a few kB; 100 scene objects ~50 kB
MAX_JSON_DEPTH = 32  # the schema nests 6 deep; `meta` adds at most MAX_META_DEPTH


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


def json_depth(text: str | bytes) -> int:
    """How deep arrays and objects nest in a JSON text, without parsing it (linear time,
    numpy: brackets inside strings are not counted)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return min(MAX_JSON_DEPTH, data.count(b"[") + data.count(b"{"))  # cannot be deeper
    a = np.frombuffer(data, dtype=np.uint8)
    idx = np.arange(len(a))
    # a quote is escaped when an odd number of backslashes precede it
    last_plain = np.maximum.accumulate(np.where(a != 0x5C, idx, -1))
    preceding = idx - 1 - np.concatenate([[-1], last_plain[:-1]])
    quote = (a == 0x22) & (preceding % 2 == 0)
    outside = np.cumsum(quote) % 2 == 0  # not inside a string (a closing quote counts as out)
    step = np.zeros(len(a), dtype=np.int64)
    step[((a == 0x5B) | (a == 0x7B)) & outside] = 1
    step[((a == 0x5D) | (a == 0x7D)) & outside] = -1
    return int(np.cumsum(step).max(initial=0))


def read_lines(file: str | os.PathLike) -> Iterator[tuple[int, str | RecordError]]:
    """(line number, text) of each non-blank line, or a RecordError for a line that is not
    UTF-8 or longer than MAX_LINE_BYTES (skipped without reading it into memory whole)."""
    name = str(file)
    with open(file, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while (chunk := f.readline(2**20)) and not chunk.endswith(b"\n"):
                    pass
                yield (
                    lineno,
                    RecordError(name, lineno, None, "", f"line longer than {MAX_LINE_BYTES} bytes"),
                )
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                msg = f"not UTF-8 text (byte {e.start} of the line: {raw[e.start : e.start + 1]!r})"
                yield lineno, RecordError(name, lineno, None, "", msg)
                continue
            if text.strip():
                yield lineno, text


def _line_errors(line: str, file: str, lineno: int) -> Iterator[RecordError]:
    depth = json_depth(line)
    if depth > MAX_JSON_DEPTH:
        yield RecordError(
            file, lineno, None, "", f"JSON nested {depth} deep (at most {MAX_JSON_DEPTH})"
        )
        return
    try:
        # NaN/Infinity literals parse here so the schema can name the field they sit in.
        raw = json.loads(line)
    except (ValueError, RecursionError) as e:
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
        for lineno, line in read_lines(file):
            if isinstance(line, RecordError):
                raise ManifestError(line)
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
        for lineno, line in read_lines(file):
            if isinstance(line, RecordError):
                yield str(file), lineno, [line]
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
        with ManifestWriter(file) as w:
            for lineno, line in read_lines(file):
                if isinstance(line, RecordError):
                    raise ManifestError(line)
                sample = parse_line(line, str(file), lineno)
                new = update(sample)
                if new is not sample and sample_to_line(new) != sample_to_line(sample):
                    changed += 1
                w.write(new)
    return changed
