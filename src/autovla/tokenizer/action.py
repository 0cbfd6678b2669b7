"""Action tokens as text and as tokenizer ids, and strict extraction from model output.

Token i of the codebook is the plain added token `<action_i>`. Extraction never guesses:
too few, too many, out-of-range or interleaved tokens raise `ActionParseError` with the
reason, instead of padding or truncating (a silently padded plan would mean "stand still").
Encoding/decoding trajectories lives on `Codebook.encode` / `Codebook.decode`; `encode` and
`decode` here are thin aliases for callers that think in terms of this module.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from autovla.data.schema import FUTURE_STEPS

ACTION_RE = re.compile(r"<action_(\d+)>")
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"


def action_token(i: int) -> str:
    """The text of codebook token i: `<action_i>`."""
    if int(i) < 0:
        raise ValueError(f"action index must be >= 0, got {i}")
    return f"<action_{int(i)}>"


def action_tokens(size: int) -> list[str]:
    """`<action_0>` ... `<action_{size-1}>`."""
    return [action_token(i) for i in range(size)]


def actions_text(indices: Sequence[int]) -> str:
    """Concatenated token text for codebook indices, e.g. `<action_3><action_0>`."""
    return "".join(action_token(i) for i in indices)


class ActionParseError(ValueError):
    """Generated text or ids do not hold exactly the expected action tokens."""


@dataclass
class ActionIds:
    """Map between codebook indices (0..K-1) and tokenizer ids of `<action_i>`."""

    ids: list[int]  # ids[i] = tokenizer id of <action_i>
    _index: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ids = [int(i) for i in self.ids]
        self._index = {tid: i for i, tid in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError("action token ids are not unique")

    @classmethod
    def from_tokenizer(cls, tokenizer, size: int) -> ActionIds:
        """Look the ids up (the tokens must already be added, see `add_action_tokens`)."""
        ids = tokenizer.convert_tokens_to_ids(action_tokens(size))
        unk = getattr(tokenizer, "unk_token_id", None)
        missing = [i for i, t in enumerate(ids) if t is None or (unk is not None and t == unk)]
        if missing:
            raise ValueError(
                f"{len(missing)} action tokens are not in the tokenizer (first: "
                f"{action_token(missing[0])}); call add_action_tokens(tokenizer, {size})"
            )
        return cls(list(ids))

    @property
    def size(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def is_action(self, token_id: int) -> bool:
        return int(token_id) in self._index

    def to_index(self, token_id: int) -> int:
        try:
            return self._index[int(token_id)]
        except KeyError:
            raise ValueError(f"token id {token_id} is not an action token") from None

    def to_indices(self, token_ids: Sequence[int]) -> list[int]:
        return [self.to_index(t) for t in token_ids]

    def to_ids(self, indices: Sequence[int]) -> list[int]:
        out = []
        for i in indices:
            if not 0 <= int(i) < self.size:
                raise ValueError(f"action index {i} outside [0, {self.size})")
            out.append(self.ids[int(i)])
        return out

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The ids as a LongTensor (K,), e.g. to restrict logits to action tokens."""
        return torch.tensor(self.ids, dtype=torch.long, device=device)

    def mask(self, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean (vocab_size,) mask, True at action-token ids."""
        m = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        m[self.tensor(device)] = True
        return m


def add_action_tokens(tokenizer, size: int) -> list[int]:
    """Add `<action_0..size-1>` as plain tokens (idempotent); return their ids in order.

    The caller resizes the model's embeddings to `len(tokenizer)`.
    """
    tokenizer.add_tokens(action_tokens(size), special_tokens=False)
    return ActionIds.from_tokenizer(tokenizer, size).ids


def _answer_part(text: str) -> str:
    """The text after the last `<answer>` (up to `</answer>`), or all of it if absent."""
    start = text.rfind(_ANSWER_OPEN)
    if start < 0:
        return text
    body = text[start + len(_ANSWER_OPEN) :]
    end = body.find(_ANSWER_CLOSE)
    return body if end < 0 else body[:end]


def _check_count(n: int, expected: int | None, what: str) -> None:
    if expected is None:
        if n == 0:
            raise ActionParseError(f"no action tokens in {what}")
        return
    if n < expected:
        raise ActionParseError(f"too few action tokens in {what}: found {n}, expected {expected}")
    if n > expected:
        raise ActionParseError(f"too many action tokens in {what}: found {n}, expected {expected}")


def _from_text(text: str, size: int | None, expected: int | None) -> list[int]:
    part = _answer_part(text)
    matches = list(ACTION_RE.finditer(part))
    _check_count(len(matches), expected, "the text")
    for a, b in itertools.pairwise(matches):
        between = part[a.end() : b.start()]
        if between.strip():
            raise ActionParseError(
                f"text interleaved with action tokens: {between.strip()[:40]!r} between "
                f"{a.group(0)} and {b.group(0)}"
            )
    indices = [int(m.group(1)) for m in matches]
    _check_range(indices, size)
    return indices


def _from_ids(token_ids: Sequence[int], ids: ActionIds, expected: int | None) -> list[int]:
    flat = [int(t) for t in token_ids]
    pos = [p for p, t in enumerate(flat) if ids.is_action(t)]
    _check_count(len(pos), expected, "the token ids")
    gaps = [(a, b) for a, b in itertools.pairwise(pos) if b != a + 1]
    if gaps:
        a, b = gaps[0]
        raise ActionParseError(
            f"other tokens interleaved with action tokens: ids {flat[a + 1 : b][:8]} at "
            f"positions {a + 1}..{b - 1}"
        )
    return [ids.to_index(flat[p]) for p in pos]


def _check_range(indices: list[int], size: int | None) -> None:
    if size is not None:
        bad = [i for i in indices if i >= size]
        if bad:
            raise ActionParseError(f"action index {bad[0]} outside the codebook [0, {size})")


def extract_action_ids(
    text_or_ids: str | Sequence[int] | torch.Tensor,
    action_ids: ActionIds | None = None,
    *,
    expected: int | None = FUTURE_STEPS,
    size: int | None = None,
) -> list[int]:
    """Codebook indices of the action tokens in generated text or token ids.

    Text: `<action_i>` tokens after the last `<answer>` (the whole text if there is none),
    separated by nothing but whitespace. Ids (needs `action_ids`): one contiguous run of
    action-token ids. `expected=None` accepts any non-zero count; `size` bounds the indices
    for text (ids are bounded by `action_ids`). Raises ActionParseError with the reason.
    """
    if isinstance(text_or_ids, str):
        return _from_text(text_or_ids, size if size is not None else _size(action_ids), expected)
    if action_ids is None:
        raise ValueError("extracting from token ids needs action_ids (ActionIds)")
    if isinstance(text_or_ids, torch.Tensor):
        if text_or_ids.ndim != 1:
            raise ValueError(f"token ids must be 1-D, got shape {tuple(text_or_ids.shape)}")
        text_or_ids = text_or_ids.tolist()
    return _from_ids(text_or_ids, action_ids, expected)


def _size(action_ids: ActionIds | None) -> int | None:
    return None if action_ids is None else action_ids.size


def encode(codebook, trajectories) -> torch.Tensor:
    """Alias of `codebook.encode(trajectories)`."""
    return codebook.encode(trajectories)


def decode(codebook, ids) -> torch.Tensor:
    """Alias of `codebook.decode(ids)`."""
    return codebook.decode(ids)
