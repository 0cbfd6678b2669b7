"""Check a dataset: every record valid, ids unique, every image present and decodable.

Image paths may point outside the dataset folder (converters reference images in place,
docs/real-datasets.md); they are only read here, never written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from autovla.data.manifest import RecordError, check_manifest, dataset_root, manifest_files
from autovla.data.schema import DrivingSample


def image_errors(
    sample: DrivingSample, root: Path, file: str = "", line: int = 0
) -> Iterator[RecordError]:
    """Missing or undecodable images (and a missing scoring file) of one sample."""
    for cam, frames in sample.cameras.items():
        for i, rel in enumerate(frames):
            field = f"cameras.{cam}.{i}"
            path = root / rel
            if not path.is_file():
                yield RecordError(file, line, sample.id, field, f"image not found: {path}")
                continue
            try:
                with Image.open(path) as im:
                    im.load()  # a full decode: a truncated JPEG fails here, not in training
            except Exception as e:  # PIL raises many types for broken files
                yield RecordError(file, line, sample.id, field, f"image does not decode: {e}")
    if sample.scoring is not None and not (root / sample.scoring).is_file():
        yield RecordError(
            file, line, sample.id, "scoring", f"scoring file not found: {root / sample.scoring}"
        )


def validate_dataset(
    path: str | os.PathLike, check_images: bool = True, progress: bool = True
) -> tuple[int, list[RecordError]]:
    """Check every record of a dataset; returns (number of valid records, all errors)."""
    root = dataset_root(path)
    manifest_files(path)  # a clear error when there is no manifest at all
    errors: list[RecordError] = []
    valid = records = 0
    for file, line, item in tqdm(
        check_manifest(path), desc="validate", unit="rec", disable=not progress
    ):
        records += 1
        if isinstance(item, list):
            errors.extend(item)
            continue
        found = list(image_errors(item, root, file, line)) if check_images else []
        errors.extend(found)
        valid += not found
    if records == 0:  # an empty dataset trains nothing: say so here, not after model loading
        errors.append(RecordError(str(path), 0, None, "", "the dataset has no records"))
    return valid, errors
