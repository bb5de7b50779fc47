"""The training loop.

One optimizer step = `train.batch_size` examples, split over processes and then into micro-batches
of `train.micro_batch_size` examples, each packed into rows. The step's loss is the sum of
target-token NLL over all its micro-batches (and processes) divided by the step's target count,
so accumulation and data parallelism give the same numbers as one big batch.

What a batch is and what its loss is belong to the objective (train/objectives/); the trainer
reports through run events (tunesmith.events) and never prints. The main process sends them; the
metrics.jsonl logbook is always one of its listeners.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.allocator import keep_freed_memory
from tunesmith.config import DataConfig, TrainConfig
from tunesmith.data.tokenize import Tokenized
from tunesmith.errors import TrainingDiverged, UserError
from tunesmith.events import CheckpointSaved, Events, StepMetrics, TrainFinished, TrainStarted, Validation
from tunesmith.io_utils import atomic_dir, write_json
from tunesmith.methods.registry import Prepared
from tunesmith.run_dir import RunDir
from tunesmith.train import auto, vocab_chunk
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.distributed import backend_name, gather_to_main, layout_for, make_accelerator
from tunesmith.train.fused_lora import fused_lora
from tunesmith.train.logbook import Logbook, read_metrics
from tunesmith.train.objectives import Objective, ObjectiveModule, get_objective
from tunesmith.train.precision import frozen_linears_in
from tunesmith.train.schedule import build_scheduler


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def resolve_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in backward (train.gradient_checkpointing).

    transformers 5 renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable` and
    warns on the old name; the old one stays for transformers 4. peft models reach either through
    their base model.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # transformers 5 does this itself, 4 leaves it to the caller: with frozen embeddings a reentrant
    # checkpointed block would get inputs that need no grad and so train nothing inside it.
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    first_loss: float
    best_val_loss: float | None
    best_step: int | None
    output_dir: Path
    tokens_per_s: float
    stopped_early: bool
    packing_efficiency: float
    tokens: float = 0.0          # non-padding tokens trained on in this fit() call
    best_checkpoint: str | None = None   # checkpoints/step-N of best_step, when one was saved


class StepPlan:
    """Which examples each optimizer step sees; a pure function of (seed, step), so resume is exact."""

    def __init__(self, n_examples: int, batch_size: int, seed: int):
        self.n, self.bs, self.seed = n_examples, batch_size, seed
        self.steps_per_epoch = math.ceil(n_examples / batch_size)
        self._perms: dict[int, list[int]] = {}

    def total_steps(self, epochs: float, max_steps: int) -> int:
        return max_steps if max_steps > 0 else max(1, math.ceil(epochs * self.steps_per_epoch))

    def indices(self, step: int) -> list[int]:
        epoch, j = divmod(step, self.steps_per_epoch)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch][j * self.bs:(j + 1) * self.bs]

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch


class Trainer:
    """Trains `prepared` on `train_set` with an objective (default SFT) into `run_dir`.

    `events`: listeners for TrainStarted, StepMetrics, Validation, CheckpointSaved and TrainFinished
    (default: none besides the logbook, which the trainer always subscribes).
    """

    def __init__(self, train_cfg: TrainConfig, data_cfg: DataConfig, prepared: Prepared, tokenizer,
                 train_set: list[Tokenized], val_set: list[Tokenized], run_dir: str | os.PathLike, *,
                 events: Events | None = None, objective: Objective | str = "sft", accelerator=None,
                 final_metadata: dict | None = None):
        if not train_set:
            raise UserError("no training examples left after tokenization", hint="check data.max_len and your data")
        if train_cfg.lr == "auto":
            # The method was prepared with a rate (its param groups carry it); "auto" is resolved by the run.
            raise UserError("train.lr is 'auto': the trainer needs the number the method was prepared with",
                            hint="run through tunesmith.pipeline.run, or give TrainConfig(lr=...)")
        train_cfg = auto.resolve_schedule(train_cfg, n_train=len(train_set), n_val=len(val_set))
        self.cfg, self.data_cfg = train_cfg, data_cfg
        self.prepared, self.tokenizer = prepared, tokenizer
        self.train_set, self.val_set = train_set, val_set
        self.run_dir = RunDir(run_dir)
        self.precision = resolve_precision(train_cfg.precision)
        # Mixed precision is handled here rather than by accelerate: its state is a process-wide
        # singleton that refuses a second, different setting (two runs in one process, tests).
        self.acc = accelerator or make_accelerator()
        self.backend = backend_name(self.acc)
        self.layout = layout_for(self.acc)
        self.layout.check(prepared, self.backend)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler(self.acc.device.type) if self.precision == "fp16" else None
        self.micro = train_cfg.micro_batch_size or train_cfg.batch_size
        self.plan = StepPlan(len(train_set), train_cfg.batch_size, train_cfg.seed)
        self.total_steps = self.plan.total_steps(train_cfg.epochs, train_cfg.max_steps)
        if isinstance(objective, str):
            objective = get_objective(objective).for_run(prepared, tokenizer, data_cfg)
        self.objective = objective
        self.final_metadata = final_metadata
        self.steps_done = 0  # optimizer steps completed, resumed ones included
        # Only the main process reports, so N processes do not write N copies of every row.
        if self.acc.is_main_process:
            self.logbook = Logbook(self.run_dir)
            self.events = Events(self.logbook, *([events.emit] if events is not None else []))
            for listener in self.objective.listeners(self.events):
                self.events.add(listener)
        else:
            self.logbook, self.events = None, Events()

        model = prepared.model
        if train_cfg.gradient_checkpointing:
            enable_activation_checkpointing(model)
        self.loss_module = ObjectiveModule(model, self.objective)
        if prepared.hooks.optimizer is not None:
            optimizer = prepared.hooks.optimizer(prepared.param_groups, weight_decay=train_cfg.weight_decay)
        else:
            optimizer = torch.optim.AdamW(prepared.param_groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        scheduler = build_scheduler(optimizer, train_cfg.scheduler, self.total_steps, train_cfg.warmup_ratio)
        self.deepspeed = self._configure_deepspeed()
        self.loss_module, self.optimizer = self.acc.prepare(self.loss_module, optimizer)
        self.scheduler = scheduler
        self.ckpt_root = self.run_dir.checkpoints

    def _configure_deepspeed(self) -> bool:
        """Tell DeepSpeed our micro-batch, accumulation and clipping: prepare() gets no dataloader to infer them from.

        The keys are the ones accelerate's `_prepare_deepspeed` reads; the per-micro-batch boundary follows
        transformers' Trainer. Clipping is train.max_grad_norm, as without DeepSpeed (0 turns it off).
        """
        plugin = self.acc.state.deepspeed_plugin
        if plugin is None:
            return False
        per_process = math.ceil(self.cfg.batch_size / self.acc.num_processes)
        micro = min(self.micro, per_process)
        accum = math.ceil(per_process / micro)
        plugin.deepspeed_config.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum,
                                       train_batch_size=micro * accum * self.acc.num_processes,
                                       gradient_clipping=self.cfg.max_grad_norm)
        self.acc.gradient_accumulation_steps = accum  # else accelerate warns of a mismatch and takes DeepSpeed's
        return True

    # --- one step ---------------------------------------------------------------------------

    def _micro_batches(self, step: int):
        idx = self.plan.indices(step)
        mine = idx[self.acc.process_index::self.acc.num_processes]
        for start in range(0, len(mine), self.micro):
            yield self.objective.collate([self.train_set[i] for i in mine[start:start + self.micro]])

    def _global_sum(self, value: float) -> float:
        if self.acc.num_processes == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def train_step(self, step: int) -> dict:
        objective, device = self.objective, self.acc.device
        batches = list(self._micro_batches(step))
        n_units = self._global_sum(float(sum(objective.units(b) for b in batches)))
        # DDP averages gradients over processes, so scale by their number to get a global sum.
        scale = self.acc.num_processes / max(1.0, n_units)
        loss_sum, real_tokens, row_tokens = 0.0, 0, 0
        metric_sums = dict.fromkeys(objective.metric_names, 0.0)
        self.loss_module.train()
        for k, batch in enumerate(batches):
            sync = k == len(batches) - 1
            if self.deepspeed:
                self.acc.sync_gradients = sync  # DeepSpeed steps inside backward(), at this boundary
            ctx = self.acc.no_sync(self.loss_module) if not sync and self.acc.num_processes > 1 else contextlib.nullcontext()
            with ctx, self._autocast():
                out = self.loss_module(objective.to_device(batch, device))
            self._backward(out.loss * scale)
            loss_sum += float(out.loss.detach())
            for name in metric_sums:
                metric_sums[name] += float(out.metrics[name])
            real, computed = objective.tokens(batch)
            real_tokens += real
            row_tokens += computed
        if not batches:  # this process got no examples in a tiny last step; keep DDP in step
            if self.deepspeed:
                self.acc.sync_gradients = True
            with self._autocast():
                dummy = sum(p.sum() * 0.0 for p in self.loss_module.parameters() if p.requires_grad)
            self._backward(dummy)
        loss = self._global_sum(loss_sum) / max(1.0, n_units)
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss} at step {step + 1}; training stopped",
                                   hint=f"the last good checkpoint is kept in {self.ckpt_root}; lower train.lr or check the data")
        grad_norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.max_grad_norm > 0:
            norm = self.acc.clip_grad_norm_(self._params(), self.cfg.max_grad_norm)
            # DeepSpeed clips inside its engine and returns no norm.
            grad_norm = float(norm) if norm is not None else None
            if grad_norm is not None and not math.isfinite(grad_norm):
                raise TrainingDiverged(f"gradient norm became {grad_norm} at step {step + 1}; training stopped",
                                       hint=f"the last good checkpoint is kept in {self.ckpt_root}")
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.deepspeed and self.cfg.max_grad_norm > 0:
            # The engine stepped (and clipped) inside the last backward; it keeps the pre-clip norm.
            norm = self.acc.deepspeed_engine_wrapped.engine.get_global_grad_norm()
            grad_norm = float(norm) if norm is not None else None
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.prepared.hooks.after_step is not None:
            self.prepared.hooks.after_step()
        metrics = {name: self._global_sum(v) / max(1.0, n_units) for name, v in metric_sums.items()}
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": self._global_sum(real_tokens),
                "row_tokens": self._global_sum(row_tokens), "metrics": metrics}

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.acc.device.type, dtype=self.autocast_dtype)

    def _backward(self, loss) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        # The loss is already normalised over the whole step; DeepSpeed must not divide it by its accumulation.
        self.acc.backward(loss, **({"scale_wrt_gas": False} if self.deepspeed else {}))

    def _params(self):
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        if not self.val_set:
            return None
        self.loss_module.eval()
        mine = self.val_set[self.acc.process_index::self.acc.num_processes]
        total, count = 0.0, 0.0
        for start in range(0, len(mine), self.micro):
            batch = self.objective.collate(mine[start:start + self.micro])
            with self._autocast():
                out = self.loss_module(self.objective.to_device(batch, self.acc.device))
            total += float(out.loss)
            count += float(out.units)
        return self._global_sum(total) / max(1.0, self._global_sum(count))

    # --- the loop ---------------------------------------------------------------------------

    def _save(self, step: int, state: dict) -> Path | None:
        path = None
        # Gathering whole tensors from shards is collective: every process takes part, the main one writes.
        model = self._model()
        trainable = self.layout.full_state(model, ckpt.trainable_names(model))
        optimizer_state = self.layout.optimizer_state(self.loss_module, self._raw_optimizer())
        rng_states = gather_to_main(self.acc, ckpt.rng_state())
        if self.acc.is_main_process:
            hooks = self.prepared.hooks
            extra = hooks.extra_state() if hooks.extra_state is not None else None
            path = ckpt.save_checkpoint(self.ckpt_root, step, trainable, optimizer_state, self.scheduler, state,
                                        extra, rng_states)
            best = state.get("best_checkpoint")
            ckpt.prune(self.ckpt_root, self.cfg.keep_checkpoints, protect=Path(best) if best else None)
            self.events.emit(CheckpointSaved(step, str(path)))
        self.acc.wait_for_everyone()
        return path

    @property
    def model(self):
        """The model being trained, outside any DDP / accelerate wrapper."""
        return self._model()

    def _model(self):
        return self.acc.unwrap_model(self.loss_module).model

    def _resume(self) -> dict:
        found = ckpt.list_checkpoints(self.ckpt_root)
        if not found:
            raise UserError(f"--resume: no checkpoint in {self.ckpt_root}", hint="start without --resume")
        extra = self._load_weights(found[-1])
        state, blob = ckpt.read_checkpoint(found[-1], self.acc.process_index)
        self.layout.load_optimizer_state(self.loss_module, self._raw_optimizer(), blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        ckpt.restore_rng(blob["rng"])
        if extra and self.prepared.hooks.load_extra_state is not None:
            self.prepared.hooks.load_extra_state(extra)
        return state

    def _load_weights(self, path: Path) -> dict:
        trainable, extra = ckpt.read_weights(path)
        self.layout.load_params(self._model(), trainable)
        return extra

    def _raw_optimizer(self):
        """The torch optimizer inside accelerate's wrapper (its state_dict is the one to save)."""
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def _restore_best(self, path: Path) -> None:
        """Finish with the best checkpoint's weights, including method state outside the trainable ones."""
        extra = self._load_weights(path)
        if extra and self.prepared.hooks.load_extra_state is not None:
            self.prepared.hooks.load_extra_state(extra)

    def _losses_before(self, state: dict) -> tuple[float, float]:
        """The run's first loss and the loss at the resumed step (older checkpoints: from the logbook)."""
        if "first_loss" in state:
            return state["first_loss"], state["last_loss"]
        rows = [r for r in read_metrics(self.run_dir.metrics) if "loss" in r and r.get("step", 0) <= state["step"]]
        return (rows[0]["loss"], rows[-1]["loss"]) if rows else (float("nan"), float("nan"))

    def _out_of_patience(self, state: dict) -> bool:
        return bool(self.cfg.early_stopping_patience) and state["bad_evals"] >= self.cfg.early_stopping_patience

    def fit(self, resume: bool = False) -> TrainResult:
        keep_freed_memory()     # a step's temporaries reuse memory instead of faulting in fresh pages (allocator.py)
        state = {"best_val_loss": None, "best_step": None, "best_checkpoint": None, "bad_evals": 0}
        start = 0
        first_loss = last_loss = float("nan")
        if resume:
            state = self._resume()
            start = state["step"]
            first_loss, last_loss = self._losses_before(state)
        self.steps_done = start
        self.objective.started(start)
        self.events.emit(TrainStarted(self.total_steps, start))
        tokens = row_tokens = 0.0
        t0 = time.perf_counter()
        stopped_early = self._out_of_patience(state)  # resuming a run that had already stopped early
        end = start if stopped_early else self.total_steps
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.objective.context(self._model()))
            stack.enter_context(vocab_chunk.reused_buffers())    # the loss head's logits, not fresh pages each chunk
            if self.prepared.kind == "adapter" and self.prepared.hooks.after_step is None and not self.layout.sharded_params:
                # Exact (autocast would round to the same values); skipped for methods that move base weights
                # and for sharded parameters, whose storage FSDP2 / ZeRO-3 own.
                stack.enter_context(frozen_linears_in(self._model(), self.autocast_dtype))
                # Plain LoRA layers as one autograd function: peft's maths (fp32 equal to 1e-5; bf16 rounds
                # differently, as close to fp32 as peft's), without its elementwise passes and dtype copies.
                stack.enter_context(fused_lora(self._model()))
            for step in range(start, end):
                out = self.train_step(step)
                done = self.steps_done = step + 1
                tokens += out["tokens"]
                row_tokens += out["row_tokens"]
                elapsed = time.perf_counter() - t0
                if step == 0:
                    first_loss = out["loss"]
                last_loss = out["loss"]
                state.update(first_loss=first_loss, last_loss=last_loss)  # so a resumed run reports them
                row = {"step": done, "epoch": round(self.plan.epoch_of(done), 4), "loss": out["loss"], **out["metrics"],
                       "lr": out["lr"], "grad_norm": out["grad_norm"], "tokens_per_s": tokens / max(elapsed, 1e-9)}
                eval_now = self.val_set and (
                    (self.cfg.eval_every and done % self.cfg.eval_every == 0) or done == self.total_steps)
                if eval_now:
                    val = self.validation_loss()
                    row["val_loss"] = val
                    improved = state["best_val_loss"] is None or val < state["best_val_loss"] - self.cfg.early_stopping_min_delta
                    if improved:
                        state.update(best_val_loss=val, best_step=done, bad_evals=0)
                    else:
                        state["bad_evals"] += 1
                    self.events.emit(Validation(done, val))
                logged = bool(done % self.cfg.log_every == 0 or eval_now or done == self.total_steps)
                self.events.emit(StepMetrics(done, self.total_steps, row, logged=logged))
                save_now = (self.cfg.save_every and done % self.cfg.save_every == 0)
                if eval_now and state.get("best_step") == done and (self.cfg.early_stopping_patience or self.cfg.save_every):
                    save_now = True  # the best is kept on disk (and from pruning) whenever checkpoints are on
                if save_now:
                    if state.get("best_step") == done:
                        state["best_checkpoint"] = str(self.run_dir.checkpoint(done))
                    self._save(done, state)
                if self._out_of_patience(state):
                    stopped_early = True
                    break
        if stopped_early and state.get("best_checkpoint"):
            # Finish with the best weights, not the ones that stopped improving.
            self._restore_best(Path(state["best_checkpoint"]))
        output_dir = self.save_final()
        elapsed = time.perf_counter() - t0
        result = TrainResult(steps=self.steps_done, final_loss=last_loss, first_loss=first_loss,
                             best_val_loss=state.get("best_val_loss"), best_step=state.get("best_step"),
                             output_dir=output_dir, tokens_per_s=tokens / max(elapsed, 1e-9),
                             stopped_early=stopped_early, packing_efficiency=tokens / max(1.0, row_tokens),
                             tokens=tokens, best_checkpoint=state.get("best_checkpoint"))
        if self.acc.is_main_process:
            summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in result.__dict__.items()}
            summary["precision"] = self.precision
            summary["backend"], summary["processes"] = self.backend, self.acc.num_processes
            write_json(self.run_dir.train_summary, summary)
            self.events.emit(TrainFinished(result.steps, summary))
        return result

    def save_final(self) -> Path:
        final = self.run_dir.final(self.prepared.kind)
        # Sharded parameters are gathered (by every process) into whole tensors the main one saves.
        state_dict = self.layout.full_state(self._model()) if self.layout.sharded_params else None
        if self.acc.is_main_process:
            with atomic_dir(final) as tmp:
                self.prepared.save(tmp, self.tokenizer, state_dict=state_dict)
                if self.final_metadata:
                    # Inside the temporary folder, so a reader never sees an adapter without its base.
                    write_json(tmp / "tunesmith.json", self.final_metadata)
        self.acc.wait_for_everyone()
        return final
