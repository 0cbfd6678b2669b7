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


_BRANCHES = {"str", "int", "float", "bool", "list", "dict", "none"}


def field_path(loc: Sequence[Any]) -> str:
    """('cameras', 'front', 2) -> 'cameras.front[2]'; FastAPI's leading 'body' and pydantic's
    union branch labels ('str', 'list[tagged-union[...]]') are dropped."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    parts = [p for p in parts if not (isinstance(p, str) and ("[" in p or p in _BRANCHES))]
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
    of the errors under the first one's field (a union's branches), the deepest."""
    out = []
    for e in errors:
        msg = "unknown field" if e.get("type") == "extra_forbidden" else str(e.get("msg", ""))
        out.append({"field": field_path(e.get("loc", ())), "message": msg})
    if len(out) > 1:
        first = out[0]["field"]
        deepest = max(
            (d for d in out if d["field"].startswith(first)), key=lambda d: len(d["field"])
        )
        out.remove(deepest)
        out.insert(0, deepest)
    return out
