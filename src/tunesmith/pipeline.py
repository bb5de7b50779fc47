"""One run, end to end: data -> method -> train -> evaluate -> merge, all into one run folder.

This is the recipe behind `tunesmith train CONFIG` and `tunesmith quickstart`; each stage is a
library call that can be used on its own.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config import RunConfig, dump_yaml
from tunesmith.data.load import load_samples
from tunesmith.data.schema import Sample
from tunesmith.data.tokenize import tokenize_all
from tunesmith.errors import UserError
from tunesmith.io_utils import atomic_file, is_within, write_json
from tunesmith.methods import check_run
from tunesmith.models import load_model, load_tokenizer, resolve_base

# What a run writes into output.dir. A fresh run (no --resume) removes these first, so metrics,
# checkpoints and reports never mix two runs (a stale checkpoint would also be what --resume picks).
# Anything else in the folder is the user's and stays.
RUN_OUTPUTS = ("config.yaml", "data_stats.json", "metrics.jsonl", "tensorboard", "loss.png", "checkpoints",
               "adapter", "model", "merged", "train_summary.json",
               "report.md", "report.json", "report.png", "predictions.jsonl")


@dataclass
class RunResult:
    run_dir: Path
    train: object
    eval_report: dict | None
    merged_dir: Path | None


def split_samples(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    if fraction <= 0:
        return samples, []
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(samples) * fraction)))
    val = sorted(order[:n_val])
    keep = sorted(order[n_val:])
    return [samples[i] for i in keep], [samples[i] for i in val]


def load_data(cfg: RunConfig) -> tuple[list[Sample], list[Sample]]:
    if not cfg.data.train:
        raise UserError("data.train is not set", hint="point data.train at a .jsonl file, e.g. --set data.train=my.jsonl")
    train = load_samples(cfg.data.train, cfg.data.format)
    if cfg.data.val:
        return train, load_samples(cfg.data.val, cfg.data.format)
    return split_samples(train, cfg.data.val_split, cfg.train.seed)


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, inputs: list[str] = ()) -> None:
    """Check output.dir and, for a fresh run, clear the previous run's outputs (main process only).

    `inputs` (base model, data files) are never deleted, even when they sit where an output would.
    """
    from accelerate import PartialState

    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output.dir {run_dir} is a file, not a folder", hint="set output.dir to a folder path")
    if not resume and not overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} already holds a run", hint="use --resume, another output.dir, or output.overwrite=true")
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        if not resume:
            clear_run_outputs(run_dir, keep=inputs)
        run_dir.mkdir(parents=True, exist_ok=True)
    # Other processes must not look at the folder while the main one is still clearing it.
    state.wait_for_everyone()


def clear_run_outputs(run_dir: Path, keep: list[str] = ()) -> None:
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if any(is_within(k, path) for k in keep):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def run(cfg: RunConfig, *, resume: bool = False, show_progress: bool = True, log=print) -> RunResult:
    from tunesmith.train.trainer import Trainer

    # Config checks first: a mistake must fail before the previous run's outputs are cleared.
    method = check_run(cfg)  # unknown method, keys it ignores, output.merge of an unmergeable method
    if cfg.eval.enabled:
        from tunesmith.eval.runner import validate as validate_eval

        validate_eval(cfg.eval)  # a missing metric extra or a bad judge fails now, not after training
    run_dir = Path(cfg.output.dir)
    inputs = [cfg.model.base, cfg.data.train, cfg.data.val, cfg.eval.data]
    prepare_run_dir(run_dir, resume=resume, overwrite=cfg.output.overwrite, inputs=[p for p in inputs if p])
    with atomic_file(run_dir / "config.yaml") as fh:
        fh.write(dump_yaml(cfg))

    resolved = resolve_base(cfg.model.base)
    log(f"base model: {resolved.label} ({resolved.path})")
    tokenizer = load_tokenizer(resolved, cfg.data.template)
    train_samples, val_samples = load_data(cfg)
    opts = dict(max_len=cfg.data.max_len, overlong=cfg.data.overlong, train_on_inputs=cfg.data.train_on_inputs,
                system_prompt=cfg.data.system_prompt)
    train_set, train_stats = tokenize_all(tokenizer, train_samples, **opts)
    val_set, val_stats = tokenize_all(tokenizer, val_samples, **opts)
    write_json(run_dir / "data_stats.json", {"train": train_stats.as_dict(), "val": val_stats.as_dict()})
    log(f"data: {train_stats.examples} train / {val_stats.examples} val examples; "
        f"{train_stats.dropped_overlong} dropped and {train_stats.truncated} truncated for data.max_len={cfg.data.max_len}")

    torch.manual_seed(cfg.train.seed)
    model = load_model(resolved, dtype=cfg.model.dtype, **method.load_options(cfg.method))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    prepared = method.prepare(model, cfg.method, cfg.train.lr)
    log(f"method: {cfg.method.name}, {prepared.trainable_parameters():,} trainable parameters")
    metadata = {"base": cfg.model.base, "method": cfg.method.name} if prepared.kind == "adapter" else None
    trainer = Trainer(cfg.train, cfg.data, prepared, tokenizer, train_set, val_set, run_dir,
                      show_progress=show_progress, final_metadata=metadata)
    result = trainer.fit(resume=resume)
    log(f"trained {result.steps} steps: loss {result.first_loss:.4f} -> {result.final_loss:.4f}, "
        f"{result.tokens_per_s:.0f} tokens/s; saved {result.output_dir}")
    if not trainer.acc.is_main_process:
        return RunResult(run_dir, result, None, None)

    report = None
    model = trainer._model()
    model.eval()
    if cfg.eval.enabled:
        eval_samples = load_samples(cfg.eval.data, cfg.data.format) if cfg.eval.data else val_samples
        if eval_samples:
            report = evaluate_run(cfg, model, tokenizer, eval_samples, train_samples, result, run_dir, show_progress)
            log(report.get("verdict", ""))
        else:
            log("eval: skipped (no eval.data, data.val or data.val_split)")
    merged_dir = None
    if cfg.output.merge and prepared.kind == "adapter":
        from tunesmith.export.merge import save_merged

        merged_dir = save_merged(model, tokenizer, run_dir / "merged")
        log(f"merged model: {merged_dir}")
    return RunResult(run_dir, result, report, merged_dir)


def evaluate_run(cfg: RunConfig, model, tokenizer, eval_samples, train_samples, train_result, run_dir: Path,
                 show_progress: bool) -> dict:
    from tunesmith.eval.runner import build_systems, run_eval
    from tunesmith.train.trainer import resolve_precision

    base_model = None
    if cfg.eval.baselines and not hasattr(model, "disable_adapter"):
        base_model = load_model(resolve_base(cfg.model.base), dtype=cfg.model.dtype)
    systems = build_systems(model, cfg.eval.baselines, base_model=base_model, few_shot_k=cfg.eval.few_shot_k)
    training = {k: getattr(train_result, k) for k in
                ("steps", "first_loss", "final_loss", "best_val_loss", "best_step", "tokens_per_s", "packing_efficiency")}
    precision = resolve_precision(cfg.train.precision)
    result = run_eval(systems, tokenizer, eval_samples, cfg.eval, run_dir, train_pool=train_samples,
                      system_prompt=cfg.data.system_prompt, precision=precision, training=training,
                      events=_eval_events(show_progress), title=f"{cfg.method.name} fine-tune of {cfg.model.base}")
    return result.report


def _eval_events(show_progress: bool):
    # Stand-in until run events reach the pipeline: eval draws its bars through the CLI's listener.
    if not show_progress:
        return None
    from tunesmith.cli.console import ConsoleDisplay
    from tunesmith.events import Events

    return Events(ConsoleDisplay())
