"""Everything one server holds: base model, tokenizer, adapter table, engine, limits, traffic log."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from pathlib import Path

import torch

from tunesmith.errors import ModelNotFound, UserError
from tunesmith.serve.adapters import AdapterSpec, inspect_adapter
from tunesmith.serve.options import ServeOptions
from tunesmith.serve.paths import AdapterDirPolicy

log = logging.getLogger("tunesmith.serve")
NAME_RE = re.compile(r"[A-Za-z0-9._:/-]{1,128}")


def _same_base(adapter_base: str | None, server_path: Path) -> bool:
    from tunesmith.models import resolve_base

    if not adapter_base:
        return True
    try:
        return resolve_base(adapter_base).path.resolve() == server_path.resolve()
    except ModelNotFound:
        # Trained elsewhere (a path that does not exist here): the layer-shape check decides.
        return True


class ServerState:
    def __init__(self, options: ServeOptions, model, tokenizer, base_path: Path):
        from tunesmith.generation import Engine, LoRABank, PeftFallback, PromptLookup, stop_token_ids
        from tunesmith.generation.eft import EmulatedFineTune
        from tunesmith.generation.prompt_cache import PromptCache
        from tunesmith.generation.speculate import DraftModel, load_draft_model
        from tunesmith.serve.traffic import TrafficLog

        self.options = options
        self.started = time.time()
        self.model = model
        self.tokenizer = tokenizer
        self.base_path = base_path
        self.base_name = options.served_name or options.model
        self.policy = AdapterDirPolicy(options.adapter_dir)
        self.adapters: dict[str, AdapterSpec] = {}
        # Models that belong to one organization (fine-tuned by its jobs); the rest are everyone's.
        self.owners: dict[str, str] = {}
        self.finetune = None     # the fine-tuning service (serve/finetune), when options.data_dir is set
        self._lock = threading.Lock()
        weights, precision = serving_precision(options.dtype)
        self.bank = LoRABank(model, dtype=torch.bfloat16 if precision == "bf16" else None)
        self.fallback = PeftFallback(lambda: _load_base(base_path, weights), precision)
        self.engine = Engine(model, tokenizer, self.bank, stop_token_ids(tokenizer), max_batch=options.max_batch,
                             max_queue=options.max_queue, fallback=self.fallback,
                             lookup=PromptLookup(max_draft=options.prompt_lookup) if options.prompt_lookup else None,
                             draft=DraftModel(load_draft_model(options.draft_model, tokenizer, options.model, weights),
                                              max_draft=options.draft_tokens) if options.draft_model else None,
                             eft=EmulatedFineTune(load_draft_model(options.eft_large, tokenizer, options.model, weights),
                                                  options.eft_beta) if options.eft_large else None,
                             prompt_cache=PromptCache(options.prompt_cache_mb << 20) if options.prompt_cache_mb else None,
                             precision=precision)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048))
        self._loop_guards: dict[int, object] = {}    # limit -> LoopGuard (engine thread calls its check)
        self.traffic = TrafficLog(options.traffic_log) if options.traffic_log else None

    # -- adapters ----------------------------------------------------------------------------------
    def model_names(self, org: str | None = None) -> list[str]:
        """The model ids `org` may use (every one when None)."""
        with self._lock:
            return [self.base_name, *(n for n in self.adapters if org is None or self.owners.get(n, org) == org)]

    def lookup(self, name: str, org: str | None = None) -> str | None:
        """The adapter a model id names (None for the base); KeyError when unknown, or another organization's."""
        if name == self.base_name:
            return None
        with self._lock:
            if name in self.adapters and (org is None or self.owners.get(name, org) == org):
                return name
        raise KeyError(name)

    def loop_check(self, adapter: str | None):
        """The per-token loop check for requests to `adapter` (None: the base model), or None when unchecked."""
        if not self.options.stop_loops:
            return None
        with self._lock:
            spec = self.adapters.get(adapter) if adapter is not None else None
        limit = (spec.loop_limit if spec is not None else None) or self.options.loop_limit
        if limit is None:
            return None
        if limit not in self._loop_guards:
            from tunesmith.generation.loops import LoopGuard, digit_token_ids

            self._loop_guards[limit] = LoopGuard(digit_token_ids(self.tokenizer), limit)
        return self._loop_guards[limit].stops_reply

    def load_adapter(self, name: str, path: str | Path, owner: str | None = None) -> AdapterSpec:
        """Read, check and install an adapter. Blocking; call from a worker thread."""
        if not NAME_RE.fullmatch(name or "") or name == self.base_name:
            raise UserError(f"adapter name '{name}' is not allowed: use 1-128 of A-Z a-z 0-9 . _ - : / "
                            "and not the base model's name")
        with self._lock:
            if name in self.adapters:
                raise UserError(f"an adapter named '{name}' is already loaded", hint="unload it first")
        path = Path(path)
        with _load_errors(name, path):
            spec = inspect_adapter(name, path, dtype=next(self.model.parameters()).dtype)
        if not _same_base(spec.base, self.base_path):
            raise UserError(f"adapter '{name}' was trained on '{spec.base}', not on this server's base model",
                            hint=f"start a server with --model {spec.base}")
        if spec.engine == "lora":
            self.engine.call(lambda: self.bank.add(name, spec.weights, spec.rank)).result()
        else:
            log.info("adapter %s: served by the peft fallback (%s)", name, spec.why_fallback)
            with _load_errors(name, path):
                model = self.fallback.build(path)
            self.fallback.add(name, model)
        with self._lock:
            self.adapters[name] = spec
            if owner is not None:
                self.owners[name] = owner
        return spec

    def unload_models(self, name: str) -> None:
        """Unload `name` and its checkpoints (`name:ckpt-step-N`), whichever are loaded."""
        for loaded in [n for n in self.model_names()[1:] if n == name or n.startswith(f"{name}:ckpt-step-")]:
            self.unload_adapter(loaded)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            spec = self.adapters.pop(name)
            self.owners.pop(name, None)
        # Waiting and running requests for it finish first: the engine thread frees the slot between steps
        # only once nothing uses it.
        def release():
            if self.engine.in_use(name):
                return False
            if spec.engine == "lora":
                self.bank.remove(name)
                if self.engine.prompt_cache is not None:     # a new adapter of this name has other keys
                    self.engine.prompt_cache.forget(name)
            else:
                self.fallback.remove(name)
            return True

        while not self.engine.call(release).result():
            time.sleep(0.05)

    def close(self) -> None:
        if self.finetune is not None:
            self.finetune.close()
        self.engine.stop()
        if self.traffic:
            self.traffic.close()


@contextlib.contextmanager
def _load_errors(name: str, path: Path):
    """Turn whatever peft / safetensors / torch raise on a bad adapter folder into a UserError naming it.

    The folder is the user's input (a flag or a POST body): a damaged file or an adapter for another
    base is their mistake to fix, not a server bug.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [""]
        # peft lists every mismatched tensor; the first couple say enough.
        detail = "; ".join(line.strip() for line in lines[:3])[:600] + (" ..." if len(lines) > 3 else "")
        raise UserError(f"adapter '{name}' at {path} could not be loaded: {type(exc).__name__}: {detail}",
                        hint="check that the folder is a complete adapter trained on this server's base model") from exc


def serving_precision(dtype: str) -> tuple[str, str]:
    """(weights dtype, engine precision) of --dtype. "auto" is what `eval` does with precision: auto on the CPU
    the server runs on: bf16 autocast over fp32 weights where the CPU has native bf16, plain fp32 elsewhere
    (where bf16 is emulated and slower than fp32)."""
    if dtype != "auto":
        return dtype, "fp32"
    from tunesmith.train.trainer import cpu_has_bf16

    return "fp32", "bf16" if cpu_has_bf16() else "fp32"


def describe_precision(dtype: str) -> str:
    """What --dtype means on this CPU, for the start-up line: "auto" picks by the CPU, so say what it picked."""
    weights, precision = serving_precision(dtype)
    if precision == "bf16":
        return "bf16 autocast over fp32 weights (--dtype auto: this CPU has native bf16)"
    return f"{weights} weights" + (" (--dtype auto: this CPU has no native bf16)" if dtype == "auto" else "")


def _load_base(path: Path, dtype: str):
    from tunesmith.models import load_model

    model = load_model(str(path), dtype=dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_state(options: ServeOptions) -> ServerState:
    """Load the base once, then every --adapter; raise UserError on any bad one."""
    from tunesmith.models import load_tokenizer, resolve_base

    resolved = resolve_base(options.model)
    tokenizer = load_tokenizer(resolved)
    model = _load_base(resolved.path, serving_precision(options.dtype)[0])
    state = ServerState(options, model, tokenizer, resolved.path)
    state.engine.start()
    try:
        for name, path in options.adapters.items():
            if not Path(path).is_dir():
                raise UserError(f"--adapter {name}={path}: no such folder")
            state.load_adapter(name, path)
        if options.data_dir:
            from tunesmith.serve.finetune.service import FineTuneService

            state.finetune = FineTuneService(state, options)
            state.finetune.start()     # serves the models of finished jobs, resumes an interrupted one
    except BaseException:
        state.close()
        raise
    return state
