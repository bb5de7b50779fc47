"""The fallback path: adapters the per-row LoRA stacks cannot hold, served through peft itself.

Each such adapter (DoRA, IA3, VeRA, prompt/prefix tuning, LoRA with modules_to_save ...) gets a
PeftModel over its own copy of the base weights, so whatever peft does in its forward (virtual
tokens, magnitude vectors, extra modules) happens exactly as in training. Tunesmith's own formats
(bottleneck adapters) go the same way, applied by their registered loader instead of peft. A batch holds requests
for one adapter with one temperature/top_p, and runs through `generate`; a stopping criterion is
the per-step hook that streams tokens, applies stop strings and drops cancelled rows. Prompt and
prefix tuning decode through eval's own virtual-token loop instead: peft's `generate` re-prepends
the virtual tokens at every step (prompt tuning) or drops the prefix cache (prefix tuning) under
transformers 5, so its answers are not the adapter's (tests/test_eval_generate.py).
"""

from __future__ import annotations

import threading

import torch

from tunesmith.serve.errors import APIError


class _StepHook:
    """Called by `generate` after each new token: hand it to the engine, report which rows are done."""

    def __init__(self, rows, engine, prompt_width: int):
        self.rows = rows
        self.engine = engine
        self.width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        import time

        now = time.monotonic()
        newest = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, newest):
            if row.done:
                continue
            if self.engine._expired(row, now):
                row.done = True
                continue
            self.engine.accept(row, token)
        return torch.tensor([r.done for r in self.rows], device=input_ids.device)


class PeftFallback:
    def __init__(self, load_base):
        self._load_base = load_base          # () -> a fresh base model (its own weights)
        self.models: dict[str, object] = {}
        self._lock = threading.Lock()

    def names(self) -> set[str]:
        with self._lock:
            return set(self.models)

    def build(self, path) -> object:
        """Load base + adapter (slow; runs outside the engine thread)."""
        from tunesmith.eval.generate import virtual_token_kind
        from tunesmith.methods import load_trained

        # load_trained, not PeftModel alone: our own folder formats (bottleneck adapters) load here too.
        model = load_trained(self._load_base(), path)
        model.eval()
        virtual_token_kind(model)  # an unsupported prompt-learning type is refused at load, not mid-request
        return model

    def add(self, name: str, model) -> None:
        with self._lock:
            self.models[name] = model

    def remove(self, name: str) -> None:
        with self._lock:
            self.models.pop(name, None)

    @torch.no_grad()
    def run(self, rows, engine) -> None:
        from transformers import StoppingCriteriaList

        from tunesmith.eval.generate import VirtualTokenDecoder, sampler, virtual_token_kind

        model = self.models.get(rows[0].adapter)
        if model is None:
            for row in rows:
                engine._fail(row, APIError(404, f"The model '{row.adapter}' was unloaded.", "invalid_request_error", "model_not_found"))
            return
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        head = rows[0]
        hook = _StepHook(rows, engine, width)
        device = next(model.parameters()).device
        if head.temperature > 0 and head.seed is not None:
            torch.manual_seed(head.seed)
        kind = virtual_token_kind(model)
        if kind:
            VirtualTokenDecoder(model, kind)(ids.to(device), mask.to(device), max(r.max_tokens for r in rows),
                                             sorted(engine.stop_ids), engine.pad_id, sampler(head.temperature, head.top_p),
                                             on_step=lambda token: hook(token[:, None], None))
        else:
            kwargs = dict(max_new_tokens=max(r.max_tokens for r in rows), pad_token_id=engine.pad_id,
                          eos_token_id=sorted(engine.stop_ids), stopping_criteria=StoppingCriteriaList([hook]))
            if head.temperature > 0:
                kwargs.update(do_sample=True, temperature=head.temperature, top_p=head.top_p, top_k=None)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        engine.stats["fallback_batches"] += 1
        for row in rows:
            if not row.done:   # generate stopped on its own (eos it saw before our hook): close the row
                engine._finish(row, "stop")
