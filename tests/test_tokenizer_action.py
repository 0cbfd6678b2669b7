"""Token text, tokenizer ids and strict extraction of action tokens."""

from __future__ import annotations

import pytest
import torch

from autovla.tokenizer import (
    ActionIds,
    ActionParseError,
    action_token,
    action_tokens,
    add_action_tokens,
    extract_action_ids,
)
from autovla.tokenizer.action import actions_text


class FakeTokenizer:
    """The slice of the Hugging Face tokenizer API that add_action_tokens uses."""

    def __init__(self) -> None:
        self.vocab = {"<unk>": 0, "hello": 1}
        self.unk_token_id = 0

    def add_tokens(self, tokens, special_tokens=False):
        new = [t for t in tokens if t not in self.vocab]
        for t in new:
            self.vocab[t] = len(self.vocab)
        return len(new)

    def convert_tokens_to_ids(self, tokens):
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]


def test_token_text():
    assert action_token(7) == "<action_7>"
    assert action_tokens(3) == ["<action_0>", "<action_1>", "<action_2>"]
    with pytest.raises(ValueError):
        action_token(-1)


def test_add_tokens_and_ids():
    tok = FakeTokenizer()
    ids = add_action_tokens(tok, 5)
    assert ids == [2, 3, 4, 5, 6]
    assert add_action_tokens(tok, 5) == ids  # idempotent
    a = ActionIds.from_tokenizer(tok, 5)
    assert a.to_indices([4, 2]) == [2, 0] and a.to_ids([2, 0]) == [4, 2]
    assert a.mask(8).nonzero()[:, 0].tolist() == ids
    with pytest.raises(ValueError, match="not in the tokenizer"):
        ActionIds.from_tokenizer(tok, 6)


def test_extract_from_text():
    text = "<think>\nmaybe <action_9>\n</think>\n<answer>\nThe final output action is: "
    text += actions_text([3, 0, 11]) + "\n</answer>"
    assert extract_action_ids(text, expected=3) == [3, 0, 11]
    assert extract_action_ids("<action_1> <action_2>", expected=None) == [1, 2]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<action_1><action_2>", "too few action tokens.*found 2, expected 3"),
        ("<action_1><action_2><action_3><action_4>", "too many.*found 4"),
        ("<action_1> go <action_2><action_3>", "interleaved.*'go'"),
        ("<action_1><action_2><action_99>", "outside the codebook"),
        ("nothing here", "found 0"),
    ],
)
def test_extract_from_text_errors(text, reason):
    with pytest.raises(ActionParseError, match=reason):
        extract_action_ids(text, expected=3, size=50)


def test_extract_from_ids():
    a = ActionIds([100, 101, 102, 103])
    assert extract_action_ids(torch.tensor([5, 6, 103, 100, 101, 7]), a, expected=3) == [3, 0, 1]
    with pytest.raises(ActionParseError, match="too few"):
        extract_action_ids([5, 103, 100, 7], a, expected=3)
    with pytest.raises(ActionParseError, match=r"interleaved.*positions 2\.\.2"):
        extract_action_ids([103, 100, 9, 101], a, expected=3)
    with pytest.raises(ValueError, match="needs action_ids"):
        extract_action_ids([1, 2, 3])


def test_with_a_hugging_face_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "the": 1, "action": 2, "is": 3, ":": 4}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    ids = add_action_tokens(hf, 2048)
    assert len(set(ids)) == 2048 and len(hf) == 5 + 2048
    enc = hf("the action is: <action_5><action_2047><action_0>")["input_ids"]
    a = ActionIds(ids)
    assert extract_action_ids(enc, a, expected=3) == [5, 2047, 0]
    assert extract_action_ids(hf.decode(enc), a, expected=3) == [5, 2047, 0]
