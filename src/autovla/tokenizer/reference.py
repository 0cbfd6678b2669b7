"""Import the reference code's pickled codebook without trusting it.

Pickle runs whatever callables a file names, so the file is read with `autovla.safe_pickle`,
which rebuilds numpy arrays and plain containers and refuses everything else before it can
be called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autovla import safe_pickle
from autovla.tokenizer.codebook import Codebook, CodebookError
from autovla.tokenizer.contours import DEFAULT_LENGTH, DEFAULT_WIDTH

MAX_BYTES = 512 * 2**20  # the reference file is ~1.2 MB; refuse absurd inputs early


class UnsafePickleError(CodebookError):
    """The pickle names something other than numpy arrays, dtypes and plain containers."""


def safe_unpickle(data: bytes) -> Any:
    """Unpickle bytes allowing only numpy arrays/dtypes/scalars and builtin containers."""
    try:
        return safe_pickle.load(data)
    except safe_pickle.UnsafePickleError as e:
        # a malformed stream is a bad codebook file; a refused global is an unsafe one
        cls = CodebookError if str(e).startswith("not a valid pickle") else UnsafePickleError
        raise cls(str(e)) from None


def load_reference_contours(path: str | os.PathLike, agent: str = "veh") -> np.ndarray:
    """The float32 [K, 6, 4, 2] contours of `agent` from a reference `agent_vocab.pkl`."""
    path = Path(path)
    if not path.is_file():
        raise CodebookError(f"{path}: no such file")
    if path.stat().st_size > MAX_BYTES:
        raise CodebookError(f"{path}: {path.stat().st_size} bytes is too large for a codebook")
    try:
        obj = safe_unpickle(path.read_bytes())
    except CodebookError as e:
        raise type(e)(f"{path}: {e}") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("token_all"), dict):
        raise CodebookError(f"{path}: expected {{'token_all': {{'veh': array, ...}}}}")
    tokens = obj["token_all"]
    if agent not in tokens:
        raise CodebookError(f"{path}: no '{agent}' tokens (found {sorted(map(str, tokens))})")
    arr = tokens[agent]
    if not isinstance(arr, np.ndarray) or arr.ndim != 4 or arr.shape[1:] != (6, 4, 2):
        shape = getattr(arr, "shape", type(arr).__name__)
        raise CodebookError(f"{path}: token_all[{agent!r}] must be [K, 6, 4, 2], got {shape}")
    if arr.dtype.kind not in "fiu":  # strings, objects, booleans are no coordinates
        raise CodebookError(
            f"{path}: token_all[{agent!r}] must hold numbers, got dtype {arr.dtype.str!r}"
        )
    with np.errstate(over="ignore"):  # out-of-range values become inf: the Codebook names them
        return np.asarray(arr, dtype=np.float32)


def import_reference(path: str | os.PathLike, agent: str = "veh") -> Codebook:
    """A Codebook from the reference pickle (contour corner order FL, FR, RR, RL, as ours)."""
    contours = load_reference_contours(path, agent)
    meta = {
        "length": DEFAULT_LENGTH,
        "width": DEFAULT_WIDTH,
        "source": "reference",
        "imported_from": Path(path).name,
        "agent": agent,
    }
    try:
        return Codebook(torch.from_numpy(contours.copy()), meta)
    except CodebookError as e:
        raise CodebookError(f"{path}: token_all[{agent!r}]: {e}") from None
