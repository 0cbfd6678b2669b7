"""A scripted stand-in for an OpenAI-compatible chat server, on loopback, for tests.

It answers `POST /v1/chat/completions` with a valid four-part annotation built from the
request's own hint (the action taken and the instruction), unless a script says otherwise.
A script maps a sample id (the request's `user` field) to a list of behaviours used one per
request: "ok", "missing" (an answer without the Intent part), "500", "429", "garbage" (a
200 that is not JSON), "slow" (sleeps past the client's timeout), "drop" (closes the
connection without answering), "drip" (a valid answer one byte every 0.2 s), "huge" (a 200
of 8 MB), "bad_usage" (a valid answer whose `usage` holds text and infinities).
`default` applies when a sample's list is used up.
Every request is logged as (sample id, behaviour).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StandIn:
    def __init__(self, script: dict[str, list[str]] | None = None, default: str = "ok"):
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.default = default
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.slow_seconds = 2.0

    def behaviour(self, user: str) -> str:
        with self.lock:
            todo = self.script.get(user)
            b = todo.pop(0) if todo else self.default
            self.log.append((user, b))
            return b

    def answered(self) -> list[str]:
        """Sample ids that got a 200 with a usable answer."""
        return [u for u, b in self.log if b in ("ok", "missing")]


def _hint(messages: list[dict[str, Any]]) -> tuple[str, str]:
    text = ""
    for part in messages[-1]["content"] if isinstance(messages[-1]["content"], list) else []:
        if part.get("type") == "text":
            text += part["text"] + "\n"
    for m in messages:  # a re-ask: the hint is in the first real user message
        if m["role"] == "user" and isinstance(m["content"], list):
            text += "\n".join(p.get("text", "") for p in m["content"])
    action = re.search(r"Action taken \(ground truth\): (.+?)\.\n", text)
    instr = re.search(r"Instruction: (.+?)\.\n", text)
    return (action.group(1) if action else "?", instr.group(1) if instr else "?")


def _answer(messages: list[dict[str, Any]], complete: bool) -> str:
    action, instruction = _hint(messages)
    lines = [
        "Scene: A straight two-lane road in daylight.",
        "Critical objects: a grey car 12 m ahead in the ego lane, moving steadily.",
        f"Intent: The instruction is to {instruction}; keep a safe gap to the car ahead.",
        f"Action: {action}",
    ]
    if not complete:
        del lines[2]
    return "\n".join(lines)


@contextmanager
def serve(standin: StandIn) -> Iterator[str]:
    """Run the stand-in on a free loopback port; yields the API base URL (…/v1)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length", "0"))
            req = json.loads(self.rfile.read(n))
            if self.path != "/v1/chat/completions":
                self._send(404, b'{"error": "not found"}')
                return
            b = standin.behaviour(str(req.get("user")))
            if b == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if b == "slow":
                time.sleep(standin.slow_seconds)
                b = "ok"
            if b in ("500", "429"):
                self._send(int(b), b'{"error": "try later"}', {"Retry-After": "0"})
                return
            if b == "garbage":
                self._send(200, b"<html>not json")
                return
            if b == "huge":
                self._send(200, b'{"choices": "' + b"x" * (8 * 2**20) + b'"}')
                return
            text = _answer(req["messages"], complete=b != "missing")
            usage: Any = {"prompt_tokens": 100, "completion_tokens": len(text) // 4}
            if b == "bad_usage":
                usage = {"prompt_tokens": "many", "completion_tokens": 1e999}
            body = {
                "choices": [{"message": {"role": "assistant", "content": text}}],
                "usage": usage,
            }
            raw = json.dumps(body).encode()
            if b == "drip":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                try:
                    for i in range(len(raw)):
                        self.wfile.write(raw[i : i + 1])
                        self.wfile.flush()
                        time.sleep(0.2)
                except OSError:  # the client gave up, as it should
                    pass
                return
            self._send(200, raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
