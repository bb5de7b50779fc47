"""The vLLM command line that serves the same base and adapters on GPUs.

vLLM's multi-LoRA serving takes `--lora-modules name=path`; it supports plain LoRA (and rsLoRA via
the adapter config), with `--max-lora-rank` from a fixed set of sizes. Adapters our server runs on
the peft fallback (DoRA, IA3, prompt tuning, bottleneck ...) have no vLLM equivalent: they are listed, not
passed, with the advice to merge those that can be merged.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tunesmith.serve.adapters import fallback_reason, read_adapter_config

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _advice(path: Path) -> str:
    from tunesmith.errors import UserError
    from tunesmith.methods import require_mergeable

    try:
        require_mergeable(path)
    except UserError:
        # Bottleneck layers, virtual tokens: nothing to fold into the weights, so no vLLM route at all.
        return "it cannot be merged into the base weights either; serve it with `tunesmith serve`"
    return "merge it (`tunesmith merge`) and serve the merged model"


def vllm_command(base_path: str | Path, adapters: dict[str, str | Path], *, served_name: str | None = None,
                 host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None) -> tuple[str, list[str]]:
    """(shell command, [notes about adapters left out])."""
    args = ["vllm", "serve", str(base_path)]
    if served_name:
        args += ["--served-model-name", served_name]
    args += ["--host", host, "--port", str(port)]
    lora, notes, max_rank = [], [], 0
    for name, path in adapters.items():
        path = Path(path).resolve()
        config = read_adapter_config(path)
        reason = fallback_reason(config, path)
        if reason:
            notes.append(f"{name}: not passed to vLLM ({reason}); {_advice(path)}")
            continue
        lora.append(f"{name}={path}")
        max_rank = max(max_rank, int(config.get("r", 8)))
    if lora:
        rank = next((r for r in VLLM_LORA_RANKS if r >= max_rank), max_rank)
        args += ["--enable-lora", "--max-loras", str(len(lora)), "--max-lora-rank", str(rank), "--lora-modules", *lora]
    if api_key:
        args += ["--api-key", api_key]
    return shlex.join(args), notes
