"""Rejections as JSON: every error names the field it is about (OpenAI's error shape)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ServiceError(ValueError):
    """A request the service will not plan: HTTP status, the field (dotted path) and why."""

    def __init__(self, status: int, param: str | None, message: str, code: str = "invalid"):
        super().__init__(f"{param}: {message}" if param else message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code


MAX_DETAILS = 20  # errors listed in one answer (a body of many bad items stays small)
MAX_MESSAGE_CHARS = 300
_BRANCHES = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_label(p: Any) -> bool:
    return isinstance(p, str) and (
        "[" in p or p in _BRANCHES or p.startswith(("constrained-", "function-"))
    )


def field_path(loc: Sequence[Any]) -> str:
    """('cameras', 'front', 2) -> 'cameras.front[2]'; FastAPI's leading 'body', pydantic's
    union branch labels ('str', 'list[tagged-union[...]]') and the tag a tagged union inserts
    after a list index ('messages[0].content[1]' + 'image_url' + 'image_url.url': the part's
    type, not a field) are dropped."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    kept: list[Any] = []
    tag_next = tagged = False
    for p in parts:
        if _is_label(p):
            tagged = tagged or "tagged-union[" in p
            continue
        if tag_next and isinstance(p, str):  # the tag pydantic puts before the part's fields
            tag_next = tagged = False
            continue
        tag_next = tagged and isinstance(p, int)
        kept.append(p)
    parts = kept
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def error_body(
    status: int, param: str | None, message: str, code: str, details: list | None = None
) -> dict[str, Any]:
    kind = {
        401: "authentication_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        503: "service_unavailable",
        504: "timeout",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")
    err: dict[str, Any] = {
        "message": f"{param}: {message}" if param else message,
        "type": kind,
        "param": param,
        "code": code,
    }
    if details:
        err["details"] = details
    return {"error": err}


def validation_details(errors: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """pydantic errors -> [{'field', 'message'}] with readable paths, the most specific first:
    of the errors under the first one's field (a union's branches), the deepest. At most
    `MAX_DETAILS` of them, each message cut to `MAX_MESSAGE_CHARS`."""
    out = []
    kinds = []
    for e in errors[:MAX_DETAILS]:
        kinds.append(str(e.get("type", "")))
        msg = "unknown field" if e.get("type") == "extra_forbidden" else str(e.get("msg", ""))
        field = field_path(e.get("loc", ()))
        if e.get("type") == "union_tag_invalid":  # the tag is the part's `type` field
            field += ".type"
        out.append({"field": field, "message": msg[:MAX_MESSAGE_CHARS]})
    if len(out) > 1:
        first = out[0]["field"]
        # Of a union's branches, the one of the input's type (not 'should be a valid list'),
        # then the deepest.
        i = max(
            (i for i, d in enumerate(out) if d["field"].startswith(first)),
            key=lambda i: (not kinds[i].endswith("_type"), len(out[i]["field"])),
        )
        deepest = out[i]
        out.remove(deepest)
        out.insert(0, deepest)
    return out
