"""The path policy: names and paths built from data never leave their folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from autovla.paths import UnsafePathError, check_name, inside, safe_name
from tests.conftest import make_sample


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/../../x", "a\\b", "x\x00y", "z" * 201])
def test_check_name_refuses(bad: str) -> None:
    with pytest.raises(UnsafePathError):
        check_name(bad, "id")


def test_safe_name_keeps_plain_names_and_separates_others() -> None:
    assert safe_name("navsim-0a1b_c.d") == "navsim-0a1b_c.d"
    a, b = safe_name("../../etc/passwd"), safe_name("..//etc/passwd")
    assert a != b
    for n in (a, b, safe_name("/"), safe_name("x" * 500)):
        assert check_name(n) == n and len(n) <= 120


def test_inside(tmp_path: Path) -> None:
    assert inside(tmp_path, "a/b.png") == tmp_path / "a/b.png"
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(UnsafePathError):
            inside(tmp_path, bad)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(UnsafePathError, match="leaves"):
        inside(tmp_path, "link/x")


def test_schema_refuses_ids_that_are_paths() -> None:
    s = make_sample(0)
    with pytest.raises(ValidationError, match="usable as a file name"):
        s.model_validate({**s.model_dump(), "id": "a/../../x"})


def test_safe_name_never_maps_two_texts_to_one_name() -> None:
    # a plain text shaped like a changed name is changed too, else it would take that name
    changed = safe_name("a b")
    assert changed.startswith("a_b-") and safe_name(changed) != changed
    assert safe_name("") != safe_name(safe_name(""))  # "" -> its bare 10-digit hash
    texts = ["a b", "a_b", "a?b", changed, safe_name(""), "", ".x", "x", "-0123456789"]
    names = [safe_name(t) for t in texts]
    assert len(set(names)) == len(texts)
    assert all(check_name(n) == n for n in names)
    assert safe_name("4f2e9c1d8b7a6e5f") == "4f2e9c1d8b7a6e5f"  # scene tokens stay as they are
