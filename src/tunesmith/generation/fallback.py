"""The fallback path: adapters the per-row LoRA stacks cannot hold, decoded through peft itself.

Each such adapter (DoRA, IA3, VeRA, prompt/prefix tuning, LoRA with modules_to_save ...) gets a
PeftModel over its own copy of the base weights, so whatever peft does in its forward (virtual
tokens, magnitude vectors, extra modules) happens exactly as in training. Tunesmith's own formats
(bottleneck adapters) go the same way, applied by their registered loader instead of peft. A batch
holds requests for one adapter with one temperature/top_p, and runs through `generate`; a stopping
criterion is the per-step hook that hands each token to the engine (streaming, stop strings) and
drops cancelled rows. Prompt and prefix tuning decode through `VirtualTokenDecoder` instead, for
the reason given in generation/virtual_tokens.py.
"""

from __future__ import annotations

import contextlib
import threading
import time

import torch

from tunesmith.generation.batching import left_pad
from tunesmith.generation.errors import AdapterUnloaded
from tunesmith.generation.sampling import generate_kwargs, sampler
from tunesmith.generation.virtual_tokens import VirtualTokenDecoder, virtual_token_kind
from tunesmith.train.precision import weights_held


class _StepHook:
    """Called by `generate` after each new token: hand it to the engine, report which rows are done."""

    def __init__(self, rows, engine):
        self.rows = rows
        self.engine = engine

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        now = time.monotonic()
        newest = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, newest):
            if row.done:
                continue
            if self.engine.drop_if_expired(row, now):
                row.done = True
                continue
            self.engine.accept(row, token)
        return torch.tensor([r.done for r in self.rows], device=input_ids.device)


class PeftFallback:
    """The engine's `FallbackPath`: one peft (or tunesmith-format) model per adapter name."""

    def __init__(self, load_base, precision: str = "fp32"):
        self._load_base = load_base          # () -> a fresh base model (its own weights)
        self.precision = precision           # the engine's: its models' weights are held so while loaded
        self.models: dict[str, object] = {}
        self._held: dict[str, contextlib.ExitStack] = {}
        self._lock = threading.Lock()

    def names(self) -> set[str]:
        with self._lock:
            return set(self.models)

    def build(self, path) -> object:
        """Load base + adapter (slow; runs outside the engine thread)."""
        from tunesmith.methods import load_trained

        # load_trained, not PeftModel alone: our own folder formats (bottleneck adapters) load here too.
        model = load_trained(self._load_base(), path)
        model.eval()
        virtual_token_kind(model)  # an unsupported prompt-learning type is refused at load, not mid-request
        return model

    def add(self, name: str, model) -> None:
        # Before the engine can see it: under a bf16 engine (autocast on its thread) the frozen weights are
        # cast once and packed here, not by autocast in every pass (train/precision.py). The model is this
        # fallback's own copy and runs no other way, so its fp32 linear weights are not kept.
        held = contextlib.ExitStack()
        held.enter_context(weights_held(model, self.precision, restore=False))
        with self._lock:
            self.models[name] = model
            self._held[name] = held

    def remove(self, name: str) -> None:
        """On the engine thread, between steps (the model is not running)."""
        with self._lock:
            self.models.pop(name, None)
            held = self._held.pop(name, None)
        if held is not None:
            held.close()

    @torch.no_grad()
    def run(self, rows, engine) -> None:
        from transformers import StoppingCriteriaList

        model = self.models.get(rows[0].adapter)
        if model is None:
            for row in rows:
                engine.fail(row, AdapterUnloaded(row.adapter))
            return
        device = next(model.parameters()).device
        ids, mask = left_pad([r.prompt_ids for r in rows], engine.pad_id, device)      # (B, T)
        head = rows[0]
        hook = _StepHook(rows, engine)
        if head.temperature > 0 and head.seed is not None:
            torch.manual_seed(head.seed)
        max_new_tokens, stops = max(r.max_tokens for r in rows), sorted(engine.stop_ids)
        kind = virtual_token_kind(model)
        if kind:
            VirtualTokenDecoder(model, kind)(ids, mask, max_new_tokens, stops, engine.pad_id,
                                             sampler(head.temperature, head.top_p),
                                             on_step=lambda token: hook(token[:, None], None))
        else:
            # top_k=None: the OpenAI API has no top-k, so a sampled answer uses temperature and top_p only.
            kwargs = generate_kwargs(max_new_tokens, engine.pad_id, stops, head.temperature, head.top_p, top_k=None)
            model.generate(input_ids=ids, attention_mask=mask, stopping_criteria=StoppingCriteriaList([hook]), **kwargs)
        engine.stats["fallback_batches"] += 1
        for row in rows:
            if not row.done:   # generate stopped on its own (eos it saw before our hook): close the row
                engine.finish(row, "stop")
