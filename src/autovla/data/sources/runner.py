"""Shared machinery of the dataset converters: work units, shards, resume, images, summary.

A converter splits a dataset into *units* (a log file, a scene, a tfrecord file). Each unit
is converted on its own and written to its own manifest `manifest-<index>-<name>.jsonl`
(atomic), so:
* `--shard I/N` takes the units whose index is I-1 modulo N (a SLURM array task per shard);
* a rerun skips units whose manifest already exists (resume after a crash or a timeout);
* memory stays bounded by one unit.

Every file written lies under `--out` (`autovla.paths.inside`): an image path built from data
(`../x`, an absolute path, a link) that would leave it is a ConvertError for that sample.
Bad values in the input (missing fields, NaN, text where a number belongs) are ConvertErrors
naming file, record and field; `--skip-bad` counts them and goes on.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from autovla.annotate.complexity import label_complexity
from autovla.data.manifest import ManifestWriter
from autovla.data.schema import DrivingSample
from autovla.io import atomic_path, write_json
from autovla.paths import UnsafePathError, inside


class ConvertError(ValueError):
    """Input that cannot be converted: names the file, the record and the field."""

    def __init__(self, file: str | os.PathLike, record: str | None, field: str, message: str):
        self.file, self.record, self.field = str(file), record, field
        self.reason = message
        rec = f" record {record!r}" if record else ""
        fld = f" field {field!r}:" if field else ""
        super().__init__(f"{self.file}:{rec}{fld} {message}")

    def __reduce__(self):  # survives the trip back from a worker process
        return (ConvertError, (self.file, self.record, self.field, self.reason))


@contextlib.contextmanager
def record_errors(file: str | os.PathLike, record: str | None) -> Iterator[None]:
    """Turn any bad-value error raised while converting one record into a ConvertError naming
    `file` and `record` (and the sample field a schema error sits in)."""
    try:
        yield
    except ConvertError:
        raise
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConvertError(file, record, loc, f"bad value in the sample: {err['msg']}") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ConvertError(file, record, "", f"bad input: {what}") from None


def numbers(
    value: Any, file: str | os.PathLike, record: str | None, field: str, size: int | None = None
) -> np.ndarray:
    """`value` as a finite float64 array (flat, of `size` numbers, when `size` is given), else
    a ConvertError naming file, record and field."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ConvertError(file, record, field, f"not numbers: {str(value)[:80]!r}") from None
    if size is not None and arr.size != size:
        raise ConvertError(file, record, field, f"expected {size} numbers, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ConvertError(file, record, field, "numbers must be finite (found NaN or inf)")
    return arr if size is None else arr.reshape(-1)


@dataclass(frozen=True)
class Filtered:
    """Samples left out by design (e.g. too little future), not bad input: always counted."""

    reason: str
    count: int = 1


@dataclass(frozen=True)
class Unit:
    """One independent piece of work, e.g. one log file."""

    index: int
    name: str
    payload: object  # converter-specific (a path, a scene token, ...)


@dataclass
class ImageOptions:
    """Reference images in place (default) or copy them, optionally resized to W x H."""

    copy: bool = False
    size: tuple[int, int] | None = None


@dataclass
class UnitResult:
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # first few skip messages, for the summary


@dataclass
class Summary:
    units_total: int = 0
    units_done: int = 0
    units_resumed: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, r: UnitResult) -> None:
        self.units_done += 1
        self.written += r.written
        self.skipped.update(r.skipped)
        self.examples.extend(r.errors[: max(0, 20 - len(self.examples))])

    def to_json(self) -> dict:
        return {
            "units_total": self.units_total,
            "units_converted": self.units_done,
            "units_already_done": self.units_resumed,
            "samples_written": self.written,
            "samples_skipped": dict(self.skipped),
            "skip_examples": self.examples,
        }


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' (1-based) -> (I, N); None -> (1, 1)."""
    if not text:
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise ValueError(f"--shard must be I/N with 1 <= I <= N, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'WxH' -> (W, H)."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"--size must be WxH (e.g. 640x360), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def unit_manifest(out: Path, unit: Unit) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", unit.name)[:80].lstrip(".")
    return out / f"manifest-{unit.index:05d}-{slug}.jsonl"


def remove_stale_temps(out: Path, units: Sequence[Unit], shard: tuple[int, int]) -> int:
    """Delete temporary files a killed run left (`.manifest-....tmp` of this shard's units,
    its summary's); other shards' may be in use by their own runs. Returns how many."""
    names = {unit_manifest(out, u).name for u in units} | {f"summary-{shard[0]}-of-{shard[1]}.json"}
    removed = 0
    for tmp in out.glob(".*.tmp"):
        # atomic_path names them ".<target>.<random>.tmp"
        if tmp.is_file() and tmp.name[1:].rsplit(".", 2)[0] in names:
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _dest(out: Path, rel_dest: str) -> Path:
    try:
        return inside(out, rel_dest, "image path")
    except UnsafePathError as e:
        msg = f"refusing to write outside --out: {e}"
        raise ConvertError(out, None, "image path", msg) from None


def place_image(src: Path, out: Path, rel_dest: str, images: ImageOptions) -> str:
    """The manifest path of image `src`: relative to `out`, copied/resized when asked.

    `src` may lie anywhere (images are referenced in place by default); a copy is written only
    under `out` (`rel_dest` is built from data: `../` in it is refused, ConvertError)."""
    if not images.copy:
        return os.path.relpath(src.resolve(), out.resolve())
    dest = _dest(out, rel_dest)
    if not dest.exists():
        if images.size is None:
            with atomic_path(dest) as tmp:
                shutil.copyfile(src, tmp)
        else:
            save_resized(src.read_bytes(), dest, images.size)
    return rel_dest


def write_image_bytes(data: bytes, out: Path, rel_dest: str, images: ImageOptions) -> str:
    """Write encoded image bytes (e.g. JPEG from a record) under `out`, resized when asked."""
    dest = _dest(out, rel_dest)
    if not dest.exists():
        if images.size is None:
            with atomic_path(dest) as tmp:
                tmp.write_bytes(data)
        else:
            save_resized(data, dest, images.size)
    return rel_dest


def save_resized(data: bytes, dest: Path, size: tuple[int, int]) -> None:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            small = im.convert("RGB").resize(size, Image.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        # a ValueError: the converter's record_errors names the file and record
        raise ValueError(f"image does not decode: {e}") from None
    with atomic_path(dest) as tmp:
        small.save(tmp, format="JPEG", quality=92)


# A converter: units() lists the work; convert(unit) yields samples, Filtered counts, or
# ConvertErrors (a bad sample the converter could step over); raising one aborts the unit.
ConvertFn = Callable[[Unit], Iterator["DrivingSample | ConvertError | Filtered"]]

_WORKER_FN: ConvertFn | None = None  # set before forking so workers inherit it


class _NoManifest:
    """Stands in for the unit manifest of a job that writes its own files (counts samples)."""

    count = 0

    def __enter__(self) -> _NoManifest:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def write(self, sample: DrivingSample) -> None:
        self.count += 1


def _convert_unit(
    unit: Unit, out: Path, skip_bad: bool, fn: ConvertFn | None = None, manifests: bool = True
) -> UnitResult:
    fn = fn or _WORKER_FN
    assert fn is not None
    result = UnitResult()

    def skip(e: ConvertError) -> None:
        if not skip_bad:
            raise e
        # group by the kind of problem: drop the details (numbers, quoted tokens)
        key = re.sub(r"'[^']*'|\d+(\.\d+)?", "N", e.reason.split(":")[0])[:60]
        result.skipped[key] += 1
        if len(result.errors) < 5:
            result.errors.append(str(e))

    with ManifestWriter(unit_manifest(out, unit)) if manifests else _NoManifest() as w:
        try:
            where = unit.payload if isinstance(unit.payload, Path) else unit.name
            with record_errors(where, None):  # a bad value no converter check caught
                for item in fn(unit):
                    if isinstance(item, ConvertError):
                        skip(item)
                    elif isinstance(item, Filtered):
                        result.skipped[f"filtered: {item.reason}"] += item.count
                    elif isinstance(item, DrivingSample):
                        # real data carries no complexity flag: the documented rule sets it
                        w.write(label_complexity(item))
                    else:
                        w.write(item)
        except ConvertError as e:
            skip(e)  # the rest of this unit is lost; what came before is kept
        result.written = w.count
    return result


def run_conversion(
    units: Sequence[Unit],
    convert: ConvertFn,
    out: str | os.PathLike,
    *,
    shard: tuple[int, int] = (1, 1),
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    desc: str = "converting",
    done: Callable[[Unit], bool] | None = None,
    manifests: bool = True,
) -> Summary:
    """Convert this shard's units that are not done yet; write `summary-<I>-of-<N>.json`.

    A unit is done when its manifest exists, or when `done(unit)` says so. `manifests=False`
    is for jobs that write their own files per sample (the metric cache): the samples a unit
    yields are then only counted."""
    from tqdm import tqdm

    global _WORKER_FN
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    i, n = shard
    mine = [u for u in units if u.index % n == i - 1]
    remove_stale_temps(out, mine, shard)
    summary = Summary(units_total=len(mine))
    is_done = done or (lambda u: unit_manifest(out, u).exists())
    todo = [u for u in mine if not is_done(u)]
    summary.units_resumed = len(mine) - len(todo)
    bar = tqdm(total=len(todo), desc=desc, unit="unit", disable=not progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            for u in todo:
                summary.add(_convert_unit(u, out, skip_bad, convert, manifests))
                bar.update()
        else:
            import multiprocessing as mp

            _WORKER_FN = convert  # fork shares the converter's (possibly large) indexes
            ctx = mp.get_context("fork")
            with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
                futures = [
                    ex.submit(_convert_unit, u, out, skip_bad, None, manifests) for u in todo
                ]
                try:
                    for f in as_completed(futures):
                        summary.add(f.result())
                        bar.update()
                except BaseException:
                    ex.shutdown(cancel_futures=True)
                    raise
    finally:
        bar.close()
        _WORKER_FN = None
    write_json(out / f"summary-{i}-of-{n}.json", summary.to_json())
    return summary
