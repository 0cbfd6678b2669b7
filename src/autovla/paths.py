"""One path policy for every file name or path built from data.

Sample ids, scene tokens, Waymo context names and data paths come from files a user may have
received from elsewhere. Nothing built from them may write outside the folder it is meant
for. Writers use these helpers and nothing else:

* `check_name(text)`: `text` as one plain file-name component, or an error naming it;
* `safe_name(text)`: any text turned into a plain component (stable, distinct texts stay
  distinct), for names a writer makes from data it does not control;
* `inside(root, rel)`: `root / rel`, refused when it would resolve outside `root`
  (absolute paths, `..`, symbolic links that leave the root).

Reading outside a dataset root is allowed where documented: converters reference images in
place, so a manifest's image paths may start with `../`.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

MAX_NAME = 200  # characters; file systems allow 255 bytes and writers add prefixes/suffixes
_BAD = re.compile(r"[^A-Za-z0-9._+=@-]")  # what safe_name replaces
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HASHED = re.compile(r"(?:.*-)?[0-9a-f]{10}")  # the shape of safe_name's changed names


class UnsafePathError(ValueError):
    """A name or path from data that would leave its folder (or is no usable name at all)."""


def name_problem(text: str) -> str | None:
    """Why `text` is not a plain file-name component, or None when it is one."""
    if not text:
        return "is empty"
    if text in (".", "..") or text.startswith(".."):
        return f"{text!r} refers to a parent or current folder"
    if "/" in text or "\\" in text:
        return f"{text!r} contains a path separator"
    if _CONTROL.search(text):
        return f"{text!r} contains control characters"
    if len(text) > MAX_NAME:
        return f"is {len(text)} characters long (at most {MAX_NAME})"
    return None


def check_name(text: str, what: str = "name") -> str:
    """`text` unchanged when it is a plain file-name component; else UnsafePathError."""
    problem = name_problem(text)
    if problem is not None:
        raise UnsafePathError(f"{what} {problem}")
    return text


def safe_name(text: str, max_len: int = 120) -> str:
    """A plain file-name component made from any text.

    Letters, digits and `._+=@-` are kept; anything else becomes `_`, and a short hash of the
    original is appended whenever something was changed, so distinct texts stay distinct. A
    text that already ends like a changed name (`-` and 10 hex digits, or only those digits)
    is hashed too: kept as it is, it could be the name another text was changed into.
    """
    clean = _BAD.sub("_", text).lstrip(".")
    if clean == text and 0 < len(text) <= max_len and not _HASHED.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{clean[: max_len - 11]}-{digest}" if clean else digest


def inside(root: str | os.PathLike, rel: str | os.PathLike, what: str = "path") -> Path:
    """`root / rel`, refused (UnsafePathError) unless it resolves inside `root`."""
    root_resolved = Path(root).resolve()
    if Path(rel).is_absolute():
        raise UnsafePathError(f"{what} {str(rel)!r} is absolute; expected a path inside {root}")
    target = (root_resolved / rel).resolve()
    if target != root_resolved and root_resolved not in target.parents:
        raise UnsafePathError(f"{what} {str(rel)!r} leaves {root}")
    return Path(root) / rel
