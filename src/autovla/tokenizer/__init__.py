"""Physical action tokens: the K-disk codebook, encode/decode, token text and ids."""

from autovla.tokenizer.action import (
    ActionIds,
    ActionParseError,
    action_token,
    action_tokens,
    add_action_tokens,
    extract_action_ids,
)
from autovla.tokenizer.codebook import Codebook, CodebookError
from autovla.tokenizer.fit import (
    NotEnoughSegmentsError,
    fit_codebook,
    fit_from_datasets,
    segments_from_trajectories,
)
from autovla.tokenizer.reference import UnsafePickleError, import_reference

__all__ = [
    "ActionIds",
    "ActionParseError",
    "Codebook",
    "CodebookError",
    "NotEnoughSegmentsError",
    "UnsafePickleError",
    "action_token",
    "action_tokens",
    "add_action_tokens",
    "extract_action_ids",
    "fit_codebook",
    "fit_from_datasets",
    "import_reference",
    "segments_from_trajectories",
]
