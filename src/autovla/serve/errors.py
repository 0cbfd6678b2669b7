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


def field_path(loc: Sequence[Any]) -> str:
    """('cameras', 'front', 2) -> 'cameras.front[2]'; FastAPI's leading 'body' is dropped."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
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
    """pydantic errors -> [{'field', 'message'}] with readable paths."""
    out = []
    for e in errors:
        msg = "unknown field" if e.get("type") == "extra_forbidden" else str(e.get("msg", ""))
        out.append({"field": field_path(e.get("loc", ())), "message": msg})
    return out
