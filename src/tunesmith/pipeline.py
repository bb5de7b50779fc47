"""One run, end to end: data -> method -> train -> evaluate -> merge, all into one run folder.

This is the recipe behind `tunesmith train CONFIG` and `tunesmith quickstart`; each stage is a
library call that can be used on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config import RunConfig, dump_yaml
from tunesmith.data.lengths import COVERAGE, MaxLen, context_of_folder, resolve_max_len
from tunesmith.data.load import load_samples
from tunesmith.data.schema import Sample
from tunesmith.data.split import split_items
from tunesmith.errors import UserError
from tunesmith.events import Events, RunFailed, RunFinished, print_messages
from tunesmith.io_utils import atomic_file, write_json
from tunesmith.methods import check_run
from tunesmith.models import has_adapter, load_model, load_tokenizer, resolve_base
from tunesmith.models.start_adapter import check_start_adapter, drop_start_adapter, load_start_adapter
from tunesmith.quiet import foreign_warnings_ignored
from tunesmith.run_dir import RunDir
from tunesmith.train import auto
from tunesmith.train.distributed import main_process_alone


@dataclass
class RunResult:
    run_dir: Path
    train: object
    eval_report: dict | None
    merged_dir: Path | None


def split_samples(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val) for data.val_split: the draw `tunesmith data split` makes (data/split.py)."""
    return split_items(samples, fraction, seed)


def load_data(cfg: RunConfig, resolved: auto.Resolved | None = None, events: Events | None = None,
              answer=None) -> tuple[RunConfig, list[Sample], list[Sample]]:
    """(cfg with data.val_split a number, train, val): the training data (one file, or a mix of sources
    whose make-up is told to `events`) split as data.val_split says, or with data.val as validation. An
    "auto" split is recorded in `resolved` when given. `answer` rewrites the answers of mix sources with
    `answers: base` (`base_answerer`)."""
    if not cfg.data.train:
        raise UserError("data.train is not set", hint="point data.train at a .jsonl file, e.g. --set data.train=my.jsonl")
    if isinstance(cfg.data.train, list):
        from tunesmith.data.mix import load_mix, mix_line

        train, parts = load_mix(cfg.data.train, cfg.data.format, cfg.train.seed, answer)
        if events is not None:
            events.message(mix_line(parts))
    else:
        train = load_samples(cfg.data.train, cfg.data.format)
    cfg = auto.resolve_val_split(cfg, len(train), resolved if resolved is not None else auto.Resolved())
    if cfg.data.val:
        return cfg, train, load_samples(cfg.data.val, cfg.data.format)
    return (cfg, *split_samples(train, cfg.data.val_split, cfg.train.seed))


def base_answerer(model_path: Path, tokenizer, cfg: RunConfig, events: Events | None):
    """The `answer` of `load_data`: a source's answers rewritten by the base model in `model_path`, told to `events`."""
    def answer(samples: list[Sample], source: str) -> list[Sample]:
        from tunesmith.data.self_answers import answered_by_base
        from tunesmith.train.trainer import resolve_precision

        done = answered_by_base(samples, source, model_path, tokenizer, seed=cfg.train.seed,
                                precision=resolve_precision(cfg.train.precision))
        if events is not None:
            how = "from the cache" if done.cached else f"in {done.seconds:.0f} s"
            cut = f"; {done.dropped_cut} cut off at the length limit, dropped" if done.dropped_cut else ""
            cut += f"; {done.dropped_empty} empty, dropped" if done.dropped_empty else ""
            events.message(f"data.train: {source}: {len(done.samples)} answers by the base model ({how}){cut}")
        return done.samples
    return answer


def resolve_data_max_len(cfg: RunConfig, objective_cls, tokenizer, train_samples: list[Sample],
                         model_path: Path | None = None) -> tuple[RunConfig, MaxLen]:
    """`data.max_len` as the number the run uses, and `cfg` with that number in place of "auto", so
    everything downstream (tokenizing, packed rows, the objectives, eval) reads one integer.

    "auto" measures the training examples as `objective_cls` compares them with max_len (one per
    example for sft, the longer side per pair for dpo/orpo, one per answer for kto) and caps the
    result by the context of the model in `model_path` (data/lengths.py)."""
    if cfg.data.max_len != "auto":
        return cfg, resolve_max_len(cfg.data.max_len)
    lengths = objective_cls.lengths(tokenizer, train_samples, cfg.data)
    context = context_of_folder(model_path, tokenizer) if model_path is not None else None
    found = resolve_max_len("auto", lengths, context)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_len": found.resolved})}), found


def data_line(train_stats, val_stats, cfg: RunConfig, max_len: MaxLen | None = None) -> str:
    """The run's one line about its data: kept examples and what was dropped, and why; with
    `data.max_len: auto`, the number it resolved to and the share of examples that fit."""
    dropped = [f"{getattr(train_stats, key)} {what}" for key, what in
               (("dropped_overlong", f"dropped as longer than data.max_len={cfg.data.max_len}"),
                ("truncated", f"truncated to data.max_len={cfg.data.max_len}"),
                ("dropped_identical", "dropped with chosen = rejected"),
                ("dropped_no_target", "dropped with nothing to train on"))
               if getattr(train_stats, key, 0)]
    unit = "pairs" if cfg.objective.name in ("dpo", "orpo") else "examples"
    return (f"data: {train_stats.examples} train / {val_stats.examples} val {unit}"
            + (f"; {', '.join(dropped)}" if dropped else "; none dropped")
            + (f"; {max_len.describe()}" if max_len is not None and max_len.auto else ""))


def overlong_warning(train_stats, cfg: RunConfig, max_len: MaxLen) -> str | None:
    """The loud line when more than 1 % of the training examples do not fit, with the fix."""
    if max_len.auto:
        return max_len.warning(cfg.data.overlong)
    over = getattr(train_stats, "dropped_overlong", 0) + getattr(train_stats, "truncated", 0)
    total = over + train_stats.examples + sum(getattr(train_stats, k, 0) for k in ("dropped_identical", "dropped_no_target"))
    if not total or over / total <= 1 - COVERAGE:
        return None
    fate = "truncated" if getattr(train_stats, "truncated", 0) else "dropped"
    return (f"data.max_len={max_len.resolved}: {over} of {total} training examples ({over / total:.1%}) are longer "
            f"and were {fate}. Fix: set data.max_len: auto (the smallest multiple of 64 that fits 99 % of them), "
            "or a larger number; `tunesmith data inspect` shows the lengths.")


def run(cfg: RunConfig, *, resume: bool = False, events: Events | None = None) -> RunResult:
    """Run `cfg` end to end. `events` receives the run's events (default: its messages printed,
    no progress bars); on an exception a RunFailed event goes out before it is re-raised. Events come
    from the main process only."""
    from accelerate import PartialState

    events = Events(print_messages) if events is None else events
    if not PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        events = Events()
    job = _Run(cfg, events)
    try:
        result = job.execute(resume)
    except BaseException as exc:
        step = job.trainer.steps_done if job.trainer is not None else None
        events.emit(RunFailed(str(exc) or type(exc).__name__, step))
        raise
    events.emit(RunFinished(str(result.run_dir)))
    return result


class _Run:
    """One call of `run`; holds the trainer so a failure can say at which step it stopped."""

    def __init__(self, cfg: RunConfig, events: Events):
        self.cfg, self.events = cfg, events
        self.trainer = None
        self.loop_guard = None    # read from the training answers for an adapter's record; eval reuses it

    def execute(self, resume: bool) -> RunResult:
        from tunesmith.train.objectives import get_objective
        from tunesmith.train.trainer import Trainer

        cfg, events = self.cfg, self.events
        # Config checks first: a mistake must fail before the previous run's outputs are cleared.
        method = check_run(cfg)  # unknown method, keys it ignores, output.merge of an unmergeable method
        objective_cls = get_objective(cfg.objective.name)
        objective_cls.check_config(cfg)
        if cfg.model.adapter:
            check_start_adapter(cfg.model.adapter, method)
        if cfg.eval.enabled:
            from tunesmith.eval.runner import validate as validate_eval

            validate_eval(cfg.eval)  # a missing metric extra or a bad judge fails now, not after training
        run_dir = RunDir(cfg.output.dir)
        from tunesmith.data.mix import source_paths

        inputs = [cfg.model.base, *source_paths(cfg.data.train), cfg.data.val, cfg.eval.data]
        run_dir.prepare(resume=resume, overwrite=cfg.output.overwrite, inputs=[p for p in inputs if p])
        with atomic_file(run_dir.config) as fh:
            fh.write(dump_yaml(cfg))

        resolved = resolve_base(cfg.model.base)
        events.message(f"base model: {resolved.label} ({resolved.path})")
        tokenizer = load_tokenizer(resolved, cfg.data.template)
        chosen = auto.Resolved()   # what each "auto" setting became, printed and saved with the run
        cfg, train_samples, val_samples = load_data(cfg, chosen, events, base_answerer(resolved.path, tokenizer, cfg, events))
        cfg, max_len = resolve_data_max_len(cfg, objective_cls, tokenizer, train_samples, resolved.path)
        train_set, train_stats = objective_cls.tokenize(tokenizer, train_samples, cfg.data)
        val_set, val_stats = objective_cls.tokenize(tokenizer, val_samples, cfg.data)
        events.message(data_line(train_stats, val_stats, cfg, max_len))
        warning = overlong_warning(train_stats, cfg, max_len)
        if warning:
            events.message(warning, "warning")

        torch.manual_seed(cfg.train.seed)
        model = load_model(resolved, dtype=cfg.model.dtype, **method.load_options(cfg.method))
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        cfg = auto.resolve_lr(cfg, method_lr=method.default_lr, method_name=method.name, resolved=chosen,
                              hidden_size=getattr(model.config, "hidden_size", None), objective_factor=objective_cls.lr_factor)
        cfg = cfg.model_copy(update={"train": auto.resolve_schedule(cfg.train, n_train=len(train_set),
                                                                    n_val=len(val_set), resolved=chosen)})
        if chosen.values:
            events.message(chosen.line())
        write_json(run_dir.data_stats, {"train": train_stats.as_dict(), "val": val_stats.as_dict(),
                                        "max_len": max_len.as_dict(), "auto": chosen.as_dict()})
        if max_len.auto or chosen.values:
            self.cfg = cfg
            with atomic_file(run_dir.config) as fh:   # the saved config re-runs with the numbers this run used
                fh.write(dump_yaml(cfg))
        with foreign_warnings_ignored():  # peft's wrapping warns about transformers internals (tunesmith.quiet)
            prepared = method.prepare(model, cfg.method, cfg.train.lr)
        events.message(f"method: {cfg.method.name}, {prepared.trainable_parameters():,} trainable parameters")
        if cfg.model.adapter:
            load_start_adapter(prepared, cfg.model.adapter)
            events.message(f"starting from the adapter {cfg.model.adapter}")
            if getattr(cfg.objective, "reference", None) != "auto":
                drop_start_adapter(prepared.model)   # only a reference needs the frozen copy
        objective = objective_cls.for_run(prepared, tokenizer, cfg.data, cfg.objective)
        reference = getattr(objective, "reference", None)
        if reference is not None:
            events.message(f"objective: {cfg.objective.name}; reference: {reference.describe}")
        metadata = None
        if prepared.kind == "adapter":
            from tunesmith.data.mix import task_examples
            from tunesmith.generation.loops import LoopGuard

            # What counts as a loop for this adapter, read once from the answers eval reads it from (the
            # user's own training examples): eval stops replies past it, and so does `tunesmith serve`
            # (--stop-loops) from this record.
            self.loop_guard = LoopGuard.from_samples(tokenizer, task_examples(train_samples, cfg.data.train))
            metadata = {"base": cfg.model.base, "method": cfg.method.name, "loop_limit": self.loop_guard.limit}
        trainer = self.trainer = Trainer(cfg.train, cfg.data, prepared, tokenizer, train_set, val_set, run_dir,
                                         events=events, objective=objective, final_metadata=metadata)
        result = trainer.fit(resume=resume)
        events.message(f"trained {result.steps} steps: loss {result.first_loss:.4f} -> {result.final_loss:.4f}, "
                       f"{result.tokens_per_s:.0f} tokens/s; saved {result.output_dir}")
        if not trainer.acc.is_main_process:
            return RunResult(run_dir.root, result, None, None)

        with main_process_alone():
            return self._after_training(cfg, trainer, result, method, prepared, tokenizer, val_samples, train_samples,
                                        events)

    def _after_training(self, cfg, trainer, result, method, prepared, tokenizer, val_samples, train_samples,
                        events) -> RunResult:
        """Evaluation and merging, on the main process alone."""
        run_dir = trainer.run_dir
        report = None
        model = trainer.model
        if trainer.layout.sharded_params:
            # FSDP2 / ZeRO-3 leave each process a shard; evaluate and merge what was saved, on a whole model.
            model = _load_saved(cfg, result.output_dir, prepared.kind, method.load_options(cfg.method))
        model.eval()
        if cfg.eval.enabled:
            eval_samples = load_samples(cfg.eval.data, cfg.data.format) if cfg.eval.data else val_samples
            if eval_samples:
                report = evaluate_run(cfg, model, tokenizer, eval_samples, train_samples, result, run_dir.root, events,
                                      loop_guard=self.loop_guard)
            else:
                events.message("eval: skipped (no eval.data, data.val or data.val_split)")
        merged_dir = None
        if cfg.output.merge and prepared.kind == "adapter":
            from tunesmith.export.merge import save_merged

            merged_dir = save_merged(model, tokenizer, run_dir.merged)
            events.message(f"merged model: {merged_dir}")
        return RunResult(run_dir.root, result, report, merged_dir)


def _load_saved(cfg: RunConfig, output_dir: Path, kind: str, load_options: dict):
    from tunesmith.methods import load_trained

    if kind == "full":
        return load_model(str(output_dir), dtype=cfg.model.dtype)
    return load_trained(load_model(resolve_base(cfg.model.base), dtype=cfg.model.dtype, **load_options), output_dir)


def evaluate_run(cfg: RunConfig, model, tokenizer, eval_samples, train_samples, train_result, run_dir: Path,
                 events: Events | None = None, loop_guard=None) -> dict:
    from tunesmith.data.mix import task_examples
    from tunesmith.eval.runner import build_systems, run_eval
    from tunesmith.train.trainer import resolve_precision

    base_model = None
    if cfg.eval.baselines and not has_adapter(model):
        base_model = load_model(resolve_base(cfg.model.base), dtype=cfg.model.dtype)
    systems = build_systems(model, cfg.eval.baselines, base_model=base_model)
    training = {k: getattr(train_result, k) for k in
                ("steps", "first_loss", "final_loss", "best_val_loss", "best_step", "tokens_per_s", "packing_efficiency")}
    precision = resolve_precision(cfg.train.precision)
    result = run_eval(systems, tokenizer, eval_samples, cfg.eval, run_dir,
                      train_pool=task_examples(train_samples, cfg.data.train),
                      system_prompt=cfg.data.system_prompt, precision=precision, training=training,
                      events=events, title=f"{cfg.method.name} fine-tune of {cfg.model.base}", loop_guard=loop_guard)
    return result.report

