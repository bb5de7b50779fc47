"""`tunesmith serve`: the OpenAI-compatible server over a base model and its adapters."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tunesmith.cli.common import app, err, out
from tunesmith.errors import UserError


def _parse_adapters(values: list[str]) -> dict[str, str]:
    adapters: dict[str, str] = {}
    for item in values:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--adapter {item!r}: expected NAME=PATH", hint="e.g. --adapter support=runs/support/adapter")
        if name in adapters:
            raise UserError(f"--adapter: the name '{name}' is given twice")
        adapters[name] = path
    return adapters


@app.command()
def serve(model: str = typer.Option("default", "--model", "-m", help="base model: 'default', an HF folder, a .gguf, a cached hub id"),
          adapter: list[str] = typer.Option([], "--adapter", "-a", help="NAME=PATH of an adapter folder (repeatable); NAME is the API model id"),
          host: str = typer.Option("127.0.0.1", help="interface to bind; anything but loopback exposes the server"),
          port: int = typer.Option(8000, help="TCP port"),
          api_key: str | None = typer.Option(None, "--api-key", envvar="TUNESMITH_API_KEY", help="require 'Authorization: Bearer KEY' (env TUNESMITH_API_KEY)"),
          adapter_dir: Path | None = typer.Option(None, "--adapter-dir", help="POST /v1/adapters may load adapters from this folder (and below) only"),
          served_name: str | None = typer.Option(None, "--served-model-name", help="API id of the base model (default: --model as given)"),
          dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16"),
          max_batch: int = typer.Option(16, help="rows decoded together in one forward pass"),
          max_queue: int = typer.Option(256, help="waiting requests before 429"),
          max_tokens_limit: int = typer.Option(1024, "--max-tokens-limit", help="largest max_tokens a request may ask for"),
          default_max_tokens: int = typer.Option(256, help="max_tokens when a chat request sets none"),
          max_body_bytes: int = typer.Option(1 << 20, help="largest request body (413 above)"),
          timeout: float = typer.Option(300.0, "--timeout", help="seconds before a request is abandoned (504)"),
          traffic_log: Path | None = typer.Option(None, "--traffic-log", help="append every chat answer to this JSONL file (messages format)"),
          print_vllm_command: bool = typer.Option(False, "--print-vllm-command", help="print the vLLM command for the same base and adapters, and exit")):
    """Serve the base model and adapters over the OpenAI API (one model id per adapter)."""
    from tunesmith.models.load import DTYPES

    adapters = _parse_adapters(adapter)
    for name, path in adapters.items():
        if not Path(path).is_dir():
            raise UserError(f"--adapter {name}={path}: no such folder")
    if dtype not in DTYPES or dtype == "auto":
        raise UserError(f"--dtype: unknown dtype '{dtype}'", hint="use fp32, bf16 or fp16")
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise UserError(f"--adapter-dir {adapter_dir}: no such folder")
    for flag, value in (("--max-batch", max_batch), ("--max-queue", max_queue), ("--max-tokens-limit", max_tokens_limit),
                        ("--default-max-tokens", default_max_tokens), ("--max-body-bytes", max_body_bytes)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1 (got {value})")
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be in 1..65535 (got {port})")
    if not timeout > 0:      # also refuses nan
        raise UserError(f"--timeout must be above 0 seconds (got {timeout:g})", hint="e.g. --timeout 300")
    if traffic_log is not None:
        from tunesmith.serve.traffic import check_log_path

        # Here, not when the server opens it: a typo must not cost a model load first.
        check_log_path(traffic_log)

    if print_vllm_command:
        from tunesmith.models import resolve_base
        from tunesmith.serve.vllm import vllm_command

        command, notes = vllm_command(resolve_base(model).path, adapters, served_name=served_name or model,
                                      host=host, port=port, api_key="$TUNESMITH_API_KEY" if api_key else None)
        out.print(command, markup=False, highlight=False, soft_wrap=True)
        for note in notes:
            err.print(f"note: {note}", markup=False, highlight=False)
        return

    from tunesmith.serve.server import serve_forever
    from tunesmith.serve.state import ServeOptions

    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err.print(f"[yellow]warning:[/yellow] listening on {host} without --api-key: anyone who can reach it can use it")
    options = ServeOptions(model=model, served_name=served_name, adapters=adapters,
                           adapter_dir=str(adapter_dir) if adapter_dir else None, api_key=api_key, dtype=dtype,
                           max_batch=max_batch, max_queue=max_queue, max_tokens_limit=max_tokens_limit,
                           default_max_tokens=default_max_tokens, max_body_bytes=max_body_bytes,
                           request_timeout_s=timeout, traffic_log=str(traffic_log) if traffic_log else None)

    def ready(state):
        names = ", ".join(state.model_names())
        err.print(f"serving {names} on http://{host}:{port}/v1 (pid {os.getpid()})", highlight=False)

    serve_forever(options, host=host, port=port, on_ready=ready)
