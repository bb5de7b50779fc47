"""`tunesmith serve`: the OpenAI-compatible server over a base model and its adapters.

The server's settings are `ServeOptions` fields, turned into flags by `options_from` (their
defaults and help text are declared there once); only what is not a server setting (where to
listen, --print-vllm-command) is declared here.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tunesmith.cli.common import app, err, out
from tunesmith.cli.options import Flag, options_from
from tunesmith.errors import UserError
from tunesmith.serve.options import ServeOptions


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


def _parse_tenants(values: list[str]) -> dict[str, str]:
    tenants: dict[str, str] = {}
    for item in values:
        org, sep, key = item.partition("=")
        if not sep or not org or not key:
            raise UserError(f"--tenant {item!r}: expected ORG=KEY", hint="e.g. --tenant acme=sk-acme-...")
        if org in tenants:
            raise UserError(f"--tenant: the organization '{org}' is given twice")
        if key in tenants.values():
            raise UserError(f"--tenant {org}=...: that key is already another organization's")
        tenants[org] = key
    return tenants


# Where a flag is not the field's name with dashes (these spellings predate the generated options).
FLAGS = {
    "model": Flag("--model", "-m"),
    "adapters": Flag("--adapter", "-a", cli_type=list[str], parse=_parse_adapters, metavar="NAME=PATH"),
    "served_name": Flag("--served-model-name"),
    "api_key": Flag("--api-key", envvar="TUNESMITH_API_KEY"),
    "adapter_dir": Flag("--adapter-dir", metavar="PATH"),
    "request_timeout_s": Flag("--timeout"),
    "traffic_log": Flag("--traffic-log", metavar="PATH"),
    "data_dir": Flag("--data-dir", metavar="PATH"),
    "tenants": Flag("--tenant", cli_type=list[str], parse=_parse_tenants, metavar="ORG=KEY"),
}


def check_options(options: ServeOptions, port: int) -> None:
    """Every flag mistake, before minutes of model loading."""
    from tunesmith.models.load import DTYPES

    for name, path in options.adapters.items():
        if not Path(path).is_dir():
            raise UserError(f"--adapter {name}={path}: no such folder")
    if options.dtype not in DTYPES:
        raise UserError(f"--dtype: unknown dtype '{options.dtype}'", hint="use auto, fp32, bf16 or fp16")
    if options.adapter_dir is not None and not Path(options.adapter_dir).is_dir():
        raise UserError(f"--adapter-dir {options.adapter_dir}: no such folder")
    for field in ("max_batch", "max_queue", "max_tokens_limit", "default_max_tokens", "max_body_bytes", "max_n",
                  "max_upload_bytes", "max_queued_jobs", "max_data_bytes"):
        value = getattr(options, field)
        if value < 1:
            raise UserError(f"--{field.replace('_', '-')} must be at least 1 (got {value})")
    if options.job_workers < 0:
        raise UserError(f"--job-workers must be 0 or more (got {options.job_workers})")
    if options.data_dir is not None and Path(options.data_dir).exists() and not Path(options.data_dir).is_dir():
        raise UserError(f"--data-dir {options.data_dir}: exists and is not a folder")
    if options.api_key and options.api_key in options.tenants.values():
        raise UserError("--api-key: the same key is also given with --tenant; give each organization its own key")
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be in 1..65535 (got {port})")
    if not options.request_timeout_s > 0:      # also refuses nan
        raise UserError(f"--timeout must be above 0 seconds (got {options.request_timeout_s:g})", hint="e.g. --timeout 300")
    if options.traffic_log is not None:
        from tunesmith.serve.traffic import check_log_path

        # Here, not when the server opens it: a typo must not cost a model load first.
        check_log_path(options.traffic_log)


@app.command()
@options_from(ServeOptions, flags=FLAGS)
def serve(options: ServeOptions,
          host: str = typer.Option("127.0.0.1", help="interface to bind; anything but loopback exposes the server"),
          port: int = typer.Option(8000, help="TCP port"),
          print_vllm_command: bool = typer.Option(False, "--print-vllm-command", help="print the vLLM command for the same base and adapters, and exit")):
    """Serve the base model and adapters over the OpenAI API (one model id per adapter)."""
    check_options(options, port)
    if print_vllm_command:
        from tunesmith.models import resolve_base
        from tunesmith.serve.vllm import vllm_command

        command, notes = vllm_command(resolve_base(options.model).path, options.adapters,
                                      served_name=options.served_name or options.model, host=host, port=port,
                                      api_key="$TUNESMITH_API_KEY" if options.api_key else None)
        out.print(command, markup=False, highlight=False, soft_wrap=True)
        for note in notes:
            err.print(f"note: {note}", markup=False, highlight=False)
        return

    from tunesmith.serve.server import serve_forever

    if host not in ("127.0.0.1", "localhost", "::1") and not options.api_key:
        err.print(f"[yellow]warning:[/yellow] listening on {host} without --api-key: anyone who can reach it can use it")

    def ready(state):
        from tunesmith.serve.state import describe_precision

        names = ", ".join(state.model_names())
        err.print(f"serving {names} on http://{host}:{port}/v1 (pid {os.getpid()}; {describe_precision(options.dtype)})",
                  highlight=False)

    serve_forever(options, host=host, port=port, on_ready=ready)
