"""`autovla serve`: one model behind HTTP (plan, OpenAI-compatible chat, metrics)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from autovla.cli.common import err_console, fail

API_KEY_ENV = "AUTOVLA_API_KEY"


def serve(
    model: Path = typer.Option(..., help="AutoVLA model directory."),
    host: str = typer.Option(None, help="Bind address (default 127.0.0.1, loopback only)."),
    port: int = typer.Option(None, help="Port (default 8000)."),
    max_batch: int = typer.Option(None, help="Requests planned in one batch (default 8)."),
    max_wait_ms: float = typer.Option(
        None, help="How long a batch waits for more requests (default 5)."
    ),
    max_queue: int = typer.Option(
        None, help="Admitted requests before answering 429 (default 32)."
    ),
    timeout_s: float = typer.Option(None, help="Per-request timeout in seconds (default 60)."),
    api_key: str = typer.Option(
        None,
        envvar=API_KEY_ENV,
        show_envvar=True,
        help="Require 'Authorization: Bearer KEY' (compared in constant time).",
    ),
    config: Path = typer.Option(
        None, help="YAML of serve settings and limits (see docs/serve.md); flags override it."
    ),
    device: str = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)."),
    threads: int = typer.Option(None, help="torch CPU threads (1 is fastest for tiny models)."),
    access_log: bool = typer.Option(False, help="Log every request."),
) -> None:
    """Serve a model over HTTP until SIGINT/SIGTERM (then finish in-flight requests)."""
    from pydantic import ValidationError

    from autovla.config import ConfigError, load_config
    from autovla.serve.config import ServeConfig

    flags = {
        "host": host, "port": port, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
        "max_queue": max_queue, "timeout_s": timeout_s, "device": device, "threads": threads,
    }  # fmt: skip
    try:
        cfg = load_config(ServeConfig, config)
        cfg = ServeConfig.model_validate(
            {**cfg.model_dump(), **{k: v for k, v in flags.items() if v is not None}}
        )
    except ConfigError as e:
        raise fail(str(e)) from None
    except ValidationError as e:  # a flag out of range
        err = e.errors()[0]
        if not err["loc"]:  # a check across settings: its message names them
            msg = err["msg"].removeprefix("Value error, ")
            raise fail(f"invalid serve settings: {msg}") from None
        name = str(err["loc"][0])
        flag = f"--{name.replace('_', '-')}" if name in flags else name
        raise fail(f"{flag}: {err['msg']} (got {err.get('input')!r})") from None
    from autovla.serve.app import BindError, bind_socket, check_api_key, create_app, run_server

    if api_key is None and API_KEY_ENV in os.environ:  # click reads an empty variable as unset
        api_key = os.environ[API_KEY_ENV]
    try:
        check_api_key(api_key)
    except ValueError:
        raise fail(
            "--api-key / $AUTOVLA_API_KEY is empty: give a non-empty key, or unset it to serve "
            "without a bearer token"
        ) from None
    try:  # before the model loads: a taken port is reported at once, with a clear line
        bind_socket(cfg.host, cfg.port).close()
    except BindError as e:
        raise fail(str(e)) from None
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err_console.print(
            f"warning: listening on {cfg.host} without --api-key: anyone who "
            "can reach this port can use the model",
            highlight=False,
        )

    from autovla.model.checkpoint import CheckpointError
    from autovla.serve.engine import Engine

    try:
        engine = Engine.load(model, device=cfg.device, threads=cfg.threads,
                             name=cfg.served_model_name)  # fmt: skip
    except (CheckpointError, FileNotFoundError, OSError) as e:
        raise fail(str(e)) from None
    err_console.print(
        f"serving {engine.name} on http://{cfg.host}:{cfg.port} "
        f"(batch <= {cfg.max_batch}, wait {cfg.max_wait_ms:g} ms, queue {cfg.max_queue}"
        f"{', bearer token required' if api_key else ''})",
        highlight=False,
    )
    try:
        run_server(create_app(engine, cfg, api_key=api_key), cfg, access_log=access_log)
    except BindError as e:  # taken between the check above and now
        raise fail(str(e)) from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
