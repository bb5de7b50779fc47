"""The continuous-batching engine: one thread, one base model, a KV cache shared by the running rows.

Each loop iteration (1) runs queued commands (adapter load/unload) between forward passes, (2)
admits waiting requests into the running batch, prefilling them as their own left-padded batch
and splicing their KV cache into the running one, (3) decodes one token for every running row,
each row with its own adapter (lora_batch) and sampling settings, and (4) drops finished,
cancelled and timed-out rows from the batch and the cache. Rows therefore join and leave at token
boundaries, as in vLLM, instead of waiting for the slowest request of a fixed batch.

Requests for adapters that cannot be batched per row go to a `FallbackPath` (the peft fallback),
as a batch of their own between the per-row batches; it reports tokens back through the engine's
row API (`accept`, `finish`, `fail`, `drop_if_expired`), so streaming, stop strings, timeouts and
statistics work the same on both paths.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import torch

from tunesmith.allocator import keep_freed_memory
from tunesmith.errors import UserError
from tunesmith.generation.batching import left_pad, pad_id, pad_left
from tunesmith.generation.cache import (
    GROW_MIN,
    ModelCall,
    SlabLayer,
    append_in_place,
    new_cache,
    plain_layer,
    slab_cache,
)
from tunesmith.generation.detok import advance
from tunesmith.generation.eft import EmulatedFineTune
from tunesmith.generation.errors import (
    AdapterUnloaded,
    EngineFailure,
    EngineStopped,
    GenerationError,
    QueueFull,
    RequestTimedOut,
)
from tunesmith.generation.prefix import SharedPrefix
from tunesmith.generation.prompt_cache import PromptCache
from tunesmith.generation.request import Event, GenRequest
from tunesmith.generation.sampling import choose_tokens, greedy_ids, row_probs, speculative_sample
from tunesmith.generation.speculate import DraftModel, PromptLookup, accepted_prefix
from tunesmith.generation.virtual_tokens import prefill_for
from tunesmith.train.precision import inference_precision, weights_held

log = logging.getLogger("tunesmith.generation")

PREFILL_TOKENS = 16384    # padded prompt tokens one prefill pass may take (64 rows of 256)


class FallbackPath(Protocol):
    """Decodes requests whose adapter the per-row LoRA stacks cannot hold (see generation.fallback)."""

    def names(self) -> set[str]:
        """The adapters it serves."""

    def run(self, rows: list[GenRequest], engine: Engine) -> None:
        """Decode `rows` (one adapter, one sampling setting) to the end, reporting through `engine`'s row API."""


class NoAdapters:
    """The adapter table of an engine that runs one model as it is (offline work: eval, the judge)."""
    slot_of: dict[str, int] = {}

    def set_rows(self, row_slots: list[int]) -> None:
        pass

    def clear_rows(self) -> None:
        pass


def _splice(old, new, width: int, spare: int, row_room: int):
    """The rows of cache `old` (None: no running rows) and then of `new`, each right-aligned to `width`
    columns, as one cache: `old` itself when the rows fit in place with `spare` columns left (at most
    GROW_MIN asked for: a slab grows when it must), else a new slab with room for `row_room` rows."""
    from transformers import DynamicCache

    if old is not None and append_in_place(old, new, width, min(GROW_MIN, spare)):
        return old
    caches = ([old] if old is not None else []) + [new]
    spliced = slab_cache(caches, width, row_room=row_room)
    if spliced is None:       # layers a slab cannot hold: concatenate, as transformers' own cache does
        spliced = caches[-1] if len(caches) == 1 else DynamicCache(ddp_cache_data=[
            (torch.cat([pad_left(layer.keys, width, 2) for layer in layers]),
             torch.cat([pad_left(layer.values, width, 2) for layer in layers]))
            for layers in zip(*(c.layers for c in caches))])
    return spliced


def _select(cache, order: list[int], moves: list[tuple[int, int]], cut: int) -> None:
    index = None
    for layer in cache.layers:
        if isinstance(layer, SlabLayer):
            layer.keep(moves, len(order), cut)
        else:
            if index is None:
                index = torch.tensor(order, device=layer.keys.device)
            layer.keys = layer.keys[index, :, cut:]
            layer.values = layer.values[index, :, cut:]


def fill_holes(keep: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """For kept row indices `keep` (ascending): the new row order, each hole among the first len(keep)
    rows taken by a kept row from past them, and those (from, to) moves. Fewer copies than compacting
    in order, which moves every row behind the first hole."""
    n, kept = len(keep), set(keep)
    holes = [i for i in range(n) if i not in kept]
    movers = [i for i in keep if i >= n]
    order = list(range(n))
    for src, dst in zip(movers, holes):
        order[dst] = src
    return order, list(zip(movers, holes))


class Batch:
    """The running rows, their KV cache (B, heads, T, head_dim) per layer, and mask (B, T); with a draft
    model or EFT, the caches of those passes too, column for column under the same mask. Row order
    means nothing: rows that leave are replaced by the last ones (`keep`)."""

    def __init__(self, max_rows: int = 16):
        self.max_rows = max_rows
        self.rows: list[GenRequest] = []
        self.cache = None
        self.extra: dict[str, object] = {}      # caches of other passes (draft model, EFT), same columns
        self.mask: torch.Tensor | None = None
        self.last: list[int] = []               # each row's newest token, not yet fed to the model

    def __len__(self) -> int:
        return len(self.rows)

    def extend(self, rows, cache, mask, last, extra: dict | None = None) -> None:
        """Add prefilled rows: their cache (B', heads, T', head_dim) per layer and mask (B', T')."""
        old = bool(self.rows)
        width = max(mask.shape[1], self.mask.shape[1] if old else 0)
        count = len(self.rows) + len(rows)
        # Columns the rows may still write (a verification pass feeds a few more than it keeps).
        spare = max(r.max_tokens - r.sampled for r in self.rows + rows) + 8
        room = min(self.max_rows, 2 * count)
        self.cache = _splice(self.cache if old else None, cache, width, spare, room)
        for name, more in (extra or {}).items():
            self.extra[name] = _splice(self.extra[name] if old else None, more, width, spare, room)
        masks = ([self.mask] if old else []) + [mask]
        self.mask = torch.cat([pad_left(m, width, 1) for m in masks])
        self.rows += rows
        self.last += last

    def keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.__init__(self.max_rows)
            return
        order, moves = fill_holes(keep)
        self.rows = [self.rows[i] for i in order]
        self.last = [self.last[i] for i in order]
        self.mask = self.mask[torch.tensor(order, device=self.mask.device)]
        # Columns that are padding for every remaining row are dead weight in every later step.
        cut = int(self.mask.any(0).nonzero()[0])
        self.mask = self.mask[:, cut:]
        for cache in (self.cache, *self.extra.values()):
            _select(cache, order, moves, cut)


class Engine:
    """Continuous batching over `model` with per-row adapters from `bank` (a `LoRABank`).

    From any thread: `start`, `stop`, `submit` (queue requests; their events arrive on each
    request's `sink`), `call` (run a function on the engine thread between steps), `in_use`,
    `load` (a snapshot of queue sizes and counters). Every request ends with exactly one final
    `Event` (a finish reason, or an error that is a `GenerationError`), except one whose
    `cancelled` is set: it is dropped silently, its client being gone.

    Row API, for decoding paths that run rows outside the per-row batch (the fallback), called on
    the engine thread: `accept` one sampled token, `finish` or `fail` a row, `drop_if_expired`.
    """

    def __init__(self, model, tokenizer, bank, stop_ids: list[int], *, max_batch: int = 16,
                 max_queue: int = 256, fallback: FallbackPath | None = None, lookup: PromptLookup | None = None,
                 draft: DraftModel | None = None, eft: EmulatedFineTune | None = None,
                 shared_prefix: list[int] | None = None, prompt_cache: PromptCache | None = None,
                 precision: str = "fp32"):
        keep_freed_memory()     # decode steps' temporaries reuse memory (allocator.py)
        self.model = model
        self.tokenizer = tokenizer
        # None: `model` runs as it is, whatever adapters it holds (a peft model, prompt tuning included).
        self.bank = bank if bank is not None else NoAdapters()
        self.stop_ids = set(stop_ids)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.fallback = fallback
        self.lookup = lookup
        self.draft = draft
        self.eft = eft
        self.pad_id = pad_id(tokenizer)
        self.device = next(model.parameters()).device
        self.prefill_inputs = prefill_for(model)
        self.forward = ModelCall(self.prefill_inputs.base)
        if draft is not None and self.prefill_inputs.base is not model:
            raise UserError("a draft model cannot draft for a prompt or prefix tuning adapter (its virtual tokens "
                            "are the target's alone)", hint="use prompt lookup, or merge a LoRA adapter instead")
        if eft is not None and (self.prefill_inputs.base is not model or
                                (bank is None and not hasattr(model, "disable_adapter"))):
            raise UserError("emulated fine-tuning needs the small model's adapter switched on and off: a peft "
                            "adapter other than prompt or prefix tuning, or a LoRA adapter the server batches per row")
        # Offline runs whose prompts all start alike prefill those tokens once (prefix.py); the draft
        # and EFT passes keep caches of their own, so they prefill whole prompts.
        plain = self.prefill_inputs.base is model and draft is None and eft is None
        self.prefix = SharedPrefix(shared_prefix) if shared_prefix and plain else None
        # Likewise prompts that start as earlier ones did (prompt_cache.py).
        self.prompt_cache = prompt_cache if plain else None
        self.waiting: collections.deque[GenRequest] = collections.deque()
        self.commands: collections.deque = collections.deque()
        self.cv = threading.Condition()
        self.batch = Batch(max_batch)
        self.stats = collections.Counter()
        # "bf16": autocast, with the frozen linear weights held in bf16 while the engine runs (train/precision.py).
        self.precision = precision
        self._stopping = False
        self._admitted: list[GenRequest] = []
        self.thread = threading.Thread(target=self._loop, name="tunesmith-engine", daemon=True)

    # -- called from any thread ----------------------------------------------------------------------
    def start(self) -> Engine:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.cv:
            self._stopping = True
            self.cv.notify_all()
        self.thread.join(timeout=10)

    def submit(self, requests: list[GenRequest]) -> None:
        """Queue all of `requests` (the n choices of one API call) or none of them (EngineStopped, QueueFull)."""
        with self.cv:
            if self._stopping:
                raise EngineStopped()
            if len(self.waiting) + len(requests) > self.max_queue:
                raise QueueFull(self.max_queue)
            self.waiting.extend(requests)
            self.cv.notify_all()

    def call(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Run `fn` on the engine thread between two forward passes (adapter table changes)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.cv:
            if self._stopping:
                future.set_exception(EngineStopped())
                return future
            self.commands.append((fn, future))
            self.cv.notify_all()
        return future

    def run(self, requests: list[GenRequest]) -> None:
        """Decode `requests` to the end on the calling thread (offline work; the engine thread is not
        started). Rows join and leave the batch as in serving; a bug raises here instead of failing rows."""
        if self.thread.is_alive():
            raise RuntimeError("run() is for an engine whose thread is not started")
        self.waiting.extend(requests)
        with torch.no_grad(), self._precision():
            while self.waiting or self.batch.rows:
                self._step()

    def in_use(self, adapter: str) -> bool:
        """Whether a waiting or running request names `adapter`."""
        with self.cv:
            return any(r.adapter == adapter for r in list(self.waiting) + self.batch.rows)

    def load(self) -> dict:
        with self.cv:
            return {"running": len(self.batch), "waiting": len(self.waiting), "max_batch": self.max_batch,
                    "max_queue": self.max_queue, **self.stats}

    # -- the row API (engine thread) -----------------------------------------------------------------------
    def accept(self, row: GenRequest, token: int) -> None:
        """Add one sampled token to `row`; send its text and, when the row is done, the final event."""
        row.sampled += 1
        self.stats["generated_tokens"] += 1
        if token in self.stop_ids:
            self.finish(row, "stop")
            return
        row.generated.append(token)
        at_limit = row.sampled >= row.max_tokens
        stopped = False
        if row.text:
            delta, stopped = advance(self.tokenizer, row, at_limit)
            if delta:
                row.sink(Event(row.index, delta))
        if stopped:
            self.finish(row, "stop", flush=False)
        elif row.check is not None and row.check(row.generated):
            self.stats["loops_stopped"] += 1
            self.finish(row, "stop")
        elif at_limit:
            self.finish(row, "length")

    def finish(self, row: GenRequest, reason: str, flush: bool = True) -> None:
        """End `row` with `reason` ("stop" or "length"), first sending any text held back for stop strings."""
        if flush and row.text and row.generated:
            delta, _ = advance(self.tokenizer, row, at_limit=True)
            if delta:
                row.sink(Event(row.index, delta))
        row.done = True
        self.stats["completed"] += 1
        if row.drafted:
            self.stats["drafted_tokens"] += row.drafted
            self.stats["accepted_draft_tokens"] += row.accepted_drafts
            self.stats["row_verifications"] += row.verifications
        if row.sink is not None:
            row.sink(Event(row.index, finish_reason=reason, completion_tokens=row.sampled))

    def fail(self, row: GenRequest, error: GenerationError) -> None:
        """End `row` with `error` as its final event."""
        row.done = True
        if row.sink is not None:
            row.sink(Event(row.index, error=error, completion_tokens=row.sampled))

    def drop_if_expired(self, row: GenRequest, now: float) -> bool:
        """True when `row` must not get another token: its client cancelled it (no event: nobody listens),
        or it is past its deadline (it fails with RequestTimedOut here)."""
        if row.cancelled.is_set():
            self.stats["cancelled"] += 1
            return True
        if now > row.deadline:
            self.stats["timed_out"] += 1
            self.fail(row, RequestTimedOut(row.timeout_s))
            return True
        return False

    # -- the engine thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        # Autocast is per thread: it has to be entered here, not where the engine was built.
        with self._precision():
            self._serve()

    def _precision(self) -> contextlib.ExitStack:
        """`inference_precision` for the engine's model (its autocast covers the whole thread), and the same
        weights held for the other models a step runs, a draft model or an EFT large base (under bf16 autocast
        an fp32 model left out would have its weights cast to bf16 in every pass)."""
        stack = contextlib.ExitStack()
        stack.enter_context(inference_precision(self.model, self.precision))
        for helper in (self.draft and self.draft.model, self.eft and self.eft.large):
            if helper is not None:
                stack.enter_context(weights_held(helper, self.precision))
        return stack

    def _serve(self) -> None:
        while True:
            with self.cv:
                while not (self._stopping or self.commands or self.waiting or self.batch.rows):
                    self.cv.wait()
                if self._stopping:
                    break
                commands = list(self.commands)
                self.commands.clear()
            for fn, future in commands:
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to the caller, which turns it into an API error
                    future.set_exception(exc)
            self._admitted = []
            try:
                self._step()
            except Exception as exc:  # a bug must not leave clients hanging: fail what was running, keep serving
                log.exception("engine step failed")
                for row in self.batch.rows + self._admitted:
                    if not row.done:
                        self.fail(row, EngineFailure(exc))
                self.batch = Batch(self.max_batch)
                self.bank.clear_rows()
        for row in list(self.waiting) + self.batch.rows:
            self.fail(row, EngineStopped())
        with self.cv:
            for _, future in self.commands:
                future.set_exception(EngineStopped())
            self.commands.clear()

    def _step(self) -> None:
        """Admit what fits, then decode one step (or hand a group to the fallback)."""
        admitted, fallback_group = self._admit()
        self._admitted = admitted      # failed by the loop if this step raises before they join the batch
        if fallback_group:
            self.fallback.run(admitted, self)
            return
        if admitted:
            self._prefill(admitted)
        if self.batch.rows:
            self._decode()

    def _servable(self, row: GenRequest, fallback_names: set[str]) -> bool:
        """False (and AdapterUnloaded to the client) when its adapter was unloaded after the request was accepted."""
        if row.adapter is None or row.adapter in self.bank.slot_of or row.adapter in fallback_names:
            return True
        self.fail(row, AdapterUnloaded(row.adapter))
        return False

    def _admit(self) -> tuple[list[GenRequest], bool]:
        fallback_names = self.fallback.names() if self.fallback else set()
        now = time.monotonic()
        with self.cv:
            live = collections.deque(r for r in self.waiting
                                     if not self.drop_if_expired(r, now) and self._servable(r, fallback_names))
            self.waiting = live
            if not live:
                return [], False
            head = live[0].group(fallback_names)
            if self.batch.rows:
                if head != ("lora",):
                    return [], False       # let the batch drain so the fallback request gets its turn
                want = ("lora",)
            else:
                want = head
            room = self.max_batch - len(self.batch)
            taken, kept, longest = [], collections.deque(), 0
            for r in live:
                # A prefill pass is capped at PREFILL_TOKENS padded tokens (its activations' memory); rows
                # that do not fit join in a later step.
                width = max(longest, len(r.prompt_ids))
                fits = not taken or (len(taken) + 1) * width <= PREFILL_TOKENS
                if len(taken) < room and fits and r.group(fallback_names) == want:
                    taken.append(r)
                    longest = width
                else:
                    kept.append(r)
            self.waiting = kept
            return taken, want != ("lora",)

    def _slots(self, rows) -> list[int]:
        return [0 if r.adapter is None else self.bank.slot_of[r.adapter] for r in rows]

    def _reusable_prefix(self, rows: list[GenRequest]) -> SharedPrefix | None:
        """The prefix whose keys and values the rows' prefill can start from: the run's shared prefix, or
        a stored prompt they all begin with (rows of one adapter only: adapters change the keys)."""
        prompts = [r.prompt_ids for r in rows]
        if self.prefix is not None and self.prefix.covers(prompts):
            return self.prefix
        adapters = {r.adapter for r in rows}
        if self.prompt_cache is None or len(adapters) != 1:
            return None
        found = self.prompt_cache.match(adapters.pop(), prompts)
        if found is not None:
            self.stats["prompt_cache_hits"] += len(rows)
        return found

    def _remember_prompts(self, rows: list[GenRequest], cache, mask: torch.Tensor) -> None:
        """Store each row's prompt keys and values (the cache's columns where `mask` (B, T) is 1). Not for
        caches whose layers drop columns (sliding windows): their columns are not the prompt's."""
        if not all(plain_layer(layer) for layer in cache.layers):
            return
        for i, row in enumerate(rows):
            cols = mask[i].nonzero().squeeze(1)
            self.prompt_cache.store(row.adapter, row.prompt_ids,
                                    [(layer.keys[i:i + 1].index_select(2, cols), layer.values[i:i + 1].index_select(2, cols))
                                     for layer in cache.layers])

    def _prefill(self, rows: list[GenRequest]) -> None:
        prompts = [r.prompt_ids for r in rows]
        shared = 0
        prefix = self._reusable_prefix(rows)
        if prefix is not None:
            cache, inputs, mask = prefix.inputs(self.forward, self.model, prompts, self.pad_id, self.device)
            ids, shared = None, len(prefix.tokens)
        else:
            ids, mask = left_pad(prompts, self.pad_id, self.device)                     # (B, T)
            cache, inputs, mask = self.prefill_inputs(ids, mask)                       # mask (B, T') of the cache
        extra = {}
        self.bank.set_rows(self._slots(rows))
        try:
            logits = self.forward.last_logits(cache, **inputs)                          # (B, V)
            if self.draft is not None:
                extra["draft"] = self.draft.prefill(ids, mask)
            if self.eft is not None:
                extra["eft_large"], large = self.eft.prefill(**inputs)
                extra["eft_base"] = new_cache(self.model)
                logits = self.eft.combine(rows, large, logits, self._base_logits(rows, extra["eft_base"], **inputs))
        finally:
            self.bank.clear_rows()
        self.stats["prefill_tokens"] += sum(len(p) - shared for p in prompts)
        if prefix is not None and prefix is not self.prefix:
            self.stats["reused_prompt_tokens"] += shared * len(prompts)
        if self.prompt_cache is not None:
            self._remember_prompts(rows, cache, mask)
        tokens = choose_tokens(logits, rows)
        first_new = len(self.batch)
        self.batch.extend(rows, cache, mask, tokens, extra)
        # Only the new rows got a token here; the running ones get theirs in the decode step.
        self._after_sampling(first_new, [[t] for t in tokens])

    def _base_logits(self, rows, cache, **inputs) -> torch.Tensor:
        """(B, V) last logits of the model with every adapter off (EFT's small base), into `cache`."""
        self.bank.set_rows([0] * len(rows))
        off = self.model.disable_adapter() if isinstance(self.bank, NoAdapters) else contextlib.nullcontext()
        try:
            with off:
                return self.forward.last_logits(cache, **inputs)
        finally:
            self.bank.set_rows(self._slots(rows))

    def _drafts(self) -> list[list[int]] | None:
        """Draft tokens per row, or None when this step decodes one token per row."""
        b = self.batch
        drafter = self.draft or self.lookup
        if drafter is None or self.eft is not None or len(b) > drafter.max_batch or not any(drafter.budget(r) for r in b.rows):
            return None
        if self.draft is not None:
            return self.draft.drafts(b.extra["draft"], b.mask, b.last, b.rows, self.pad_id)
        drafts = [self.lookup.draft(row) for row in b.rows]
        return drafts if any(drafts) else None

    def _decode(self) -> None:
        b = self.batch
        drafts = self._drafts()
        self.bank.set_rows(self._slots(b.rows))
        try:
            if drafts is None:
                ids = torch.tensor(b.last, dtype=torch.long, device=self.device)[:, None]  # (B, 1)
                position_ids = b.mask.sum(1, keepdim=True)                                 # (B, 1)
                b.mask = torch.cat([b.mask, b.mask.new_ones(len(b), 1)], dim=1)
                inputs = {"input_ids": ids, "attention_mask": b.mask, "position_ids": position_ids}
                logits = self.forward.last_logits(b.cache, **inputs)
                if self.draft is not None:      # the draft cache gets every column the target gets
                    self.draft.feed(b.extra["draft"], b.mask, ids)
                if self.eft is not None:
                    large = self.eft.call.last_logits(b.extra["eft_large"], **inputs)
                    logits = self.eft.combine(b.rows, large, logits, self._base_logits(b.rows, b.extra["eft_base"], **inputs))
                new = [[t] for t in choose_tokens(logits, b.rows)]
            else:
                new = self._verify(drafts)
        finally:
            self.bank.clear_rows()
        self.stats["decode_steps"] += 1
        self.stats["decode_rows"] += len(b)
        self._after_sampling(0, new)

    def _verify(self, drafts: list[list[int]]) -> list[list[int]]:
        """Feed each row's newest token and its draft in one pass; keep the accepted prefix and the model's
        next token. Columns of rejected (or no) draft tokens stay in the cache masked out, like padding:
        positions count the mask's ones, so every later token sees exactly what plain decoding shows it."""
        b = self.batch
        width = 1 + max(len(d) for d in drafts)
        fed = [[last, *d] for last, d in zip(b.last, drafts)]
        ids, fed_mask = left_pad([f[::-1] for f in fed], self.pad_id, self.device)         # right-padded, reversed
        ids, fed_mask = ids.flip(1), fed_mask.flip(1)                                       # (B, width)
        start = b.mask.shape[1]
        position_ids = b.mask.sum(1, keepdim=True) + torch.arange(width, device=self.device)  # (B, width)
        b.mask = torch.cat([b.mask, fed_mask], dim=1)
        logits = self.forward.tail_logits(b.cache, width, input_ids=ids, attention_mask=b.mask,
                                          position_ids=position_ids)                        # (B, width, V)
        greedy = greedy_ids(logits).tolist()
        first = choose_tokens(logits[:, 0], b.rows)     # rows without a draft
        new = []
        for i, (row, draft) in enumerate(zip(b.rows, drafts)):
            if not draft:
                new.append([first[i]])
                continue
            if row.temperature > 0:
                tokens = speculative_sample(row_probs(logits[i, :len(draft) + 1], row), draft, row.generator)
            else:
                tokens = [*draft[:accepted_prefix(draft, greedy[i])], None]
                tokens[-1] = greedy[i][len(tokens) - 1]
            n = len(tokens) - 1                                   # draft tokens kept
            (self.draft or self.lookup).record(row, len(draft), n)
            b.mask[i, start + 1 + n:start + 1 + len(draft)] = 0   # the rejected draft tokens' cache columns
            new.append(tokens)
        self.stats["verify_steps"] += 1
        return new

    def _after_sampling(self, start: int, new: list[list[int]]) -> None:
        """Account the new tokens of rows[start:] (one each, or an accepted draft and one); drop every row
        that is done, cancelled or late."""
        b = self.batch
        now = time.monotonic()
        keep = []
        for i, row in enumerate(b.rows):
            if row.done or self.drop_if_expired(row, now):
                continue
            if i >= start:
                tokens = new[i - start]
                for token in tokens:
                    self.accept(row, token)
                    if row.done:
                        break
                b.last[i] = tokens[-1]
            if not row.done:
                keep.append(i)
        b.keep(keep)
