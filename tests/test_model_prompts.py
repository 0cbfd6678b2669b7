"""Prompt format: rendering, parsing, the stored snapshot, format files."""

from __future__ import annotations

from pathlib import Path

import pytest

from autovla.model.prompts import (
    PromptFormat,
    action_ids_from_text,
    build_messages,
    mode_prefix,
    parse_answer,
    render_answer,
)
from tests.model_fixtures import (
    one_torch_thread,  # noqa: F401 (autouse fixture)
    sample,
)

SNAPSHOT = Path(__file__).parent / "data" / "model_prompt_autovla-v1.txt"


@pytest.fixture(scope="module")
def fmt() -> PromptFormat:
    return PromptFormat.load()


def test_fast_answer_structure(fmt):
    text = render_answer(list(range(10)), None, fmt)
    assert text.startswith(fmt.fast_marker)
    assert (
        text
        == mode_prefix("fast", fmt)
        + fmt.think_close
        + fmt.action_open
        + "".join(f"<action_{i}>" for i in range(10))
        + fmt.action_close
    )
    mode, reasoning, actions = parse_answer(text, fmt)
    assert (mode, reasoning) == ("fast", None)
    assert action_ids_from_text(actions) == list(range(10))


def test_slow_answer_round_trip(fmt):
    cot = "Scene: a wet road.\nBest action: move forward with a deceleration."
    text = render_answer([5] * 10, cot, fmt)
    assert text.startswith(mode_prefix("slow", fmt))
    assert fmt.mode_of(text) == "slow"
    mode, reasoning, actions = parse_answer(text, fmt)
    assert mode == "slow" and reasoning == cot
    assert action_ids_from_text(actions) == [5] * 10
    # Empty reasoning is the fast answer.
    assert render_answer([1] * 10, "  ", fmt) == render_answer([1] * 10, None, fmt)


def test_parse_garbage(fmt):
    assert parse_answer("hello", fmt) == (None, None, "")
    mode, _, actions = parse_answer("xx <action_3><action_4>", fmt)
    assert mode is None and action_ids_from_text(actions) == [3, 4]


def test_messages_order_and_videos(fmt):
    s = sample(1, None)
    msgs = build_messages(s, fmt, system="action_only")
    assert msgs[0]["content"][0]["text"] == fmt.system_action_only
    videos = [c["video"] for c in msgs[1]["content"] if c["type"] == "video"]
    assert videos == [s.cameras["front"], s.cameras["front_left"], s.cameras["front_right"]]
    texts = "".join(c["text"] for c in msgs[1]["content"] if c["type"] == "text")
    assert "5.500 m/s" in texts and "0.250 m/s^2" in texts and "turn left" in texts
    with pytest.raises(ValueError, match="system"):
        build_messages(s, fmt, system="other")


def test_prompt_snapshot(fmt):
    """The rendered chat (tiny tokenizer's template) matches the stored snapshot."""
    from autovla.model.inputs import render_prompt
    from tests.model_fixtures import tiny_vla

    vla = tiny_vla()
    s = sample(1, None)
    text = render_prompt(vla.processor, build_messages(s, fmt)) + render_answer(
        list(range(10)), s.reasoning, fmt
    )
    if not SNAPSHOT.exists():  # regenerate deliberately: delete the file, run, review, commit
        SNAPSHOT.write_text(text, encoding="utf-8")
        pytest.fail(f"snapshot {SNAPSHOT.name} was missing and has been written; review it")
    assert text == SNAPSHOT.read_text(encoding="utf-8")


def test_format_save_load_and_override(fmt, tmp_path):
    custom = fmt.model_copy(update={"name": "other", "version": 2, "fast_line": "Easy.\n"})
    custom.save(tmp_path)
    loaded = PromptFormat.load(tmp_path)
    assert loaded == custom and loaded.version == 2
    assert render_answer([0] * 10, None, loaded).startswith("<think>\nEasy.\n</think>")
    with pytest.raises(FileNotFoundError, match="bundled"):
        PromptFormat.load("no-such-format")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: 0\n")
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        PromptFormat.load(bad)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{instruction.__class__.__mro__}", "only {speed}, {accel}, {instruction} are allowed"),
        ("{speed[0]}", "only {speed}, {accel}, {instruction} are allowed"),
        ("{0}", "only {speed}, {accel}, {instruction} are allowed"),
        ("{speed:>100000000}", "width at most 40"),
        ("{speed:.99}", "precision at most 12"),
        ("{speed:{accel}}", "is not \\[align\\]\\[width\\]\\[.precision\\]\\[type\\]"),
        ("{speed!r}", "conversions"),
        ("{instruction:.3f}", "type 'f' cannot format text"),
        ("{instruction:+}", "Sign not allowed in string format specifier"),
        ("speed {", "write {{ and }} for literal braces"),
    ],
)
def test_unsafe_user_state_is_refused_when_loaded(fmt, tmp_path, template, message):
    from autovla.model.prompts import PromptFormatError

    path = tmp_path / "f.yaml"
    fmt.model_copy(update={"user_state": template}).save(tmp_path)
    (tmp_path / "prompt_format.yaml").rename(path)
    with pytest.raises(PromptFormatError, match=message) as e:
        PromptFormat.load(path)
    assert str(e.value).startswith(f"invalid prompt format {path}: user_state: ")


def test_user_state_template_renders_plain_specs(fmt):
    from autovla.model.prompts import PromptFormatError, render_user_state

    template = "{{speed}} {speed:*^10.2f}|{accel:+.1e}|{instruction:>8s}|{instruction}"
    loaded = fmt.model_copy(update={"user_state": template})
    assert PromptFormat.model_validate(loaded.model_dump()) == loaded
    text = render_user_state(template, 3.14159, -0.5, "Turn left")
    assert text == "{speed} ***3.14***|-5.0e-01|Turn left|Turn left"
    # a format built around validation (model_copy) is still checked when rendered
    with pytest.raises(PromptFormatError, match="only"):
        render_user_state("{speed.real}", 1.0, 0.0, "x")
