"""`tunesmith sweep`: a small, budgeted search over learning rate, LoRA rank and epochs.

Each trial is one ordinary run of the pipeline (pipeline.run) on the config with a few keys
overridden, scored on a validation split held out of the training data, never on the test set:

- by validation loss (lower is better), always;
- by the config's first `eval.metrics` entry on (up to `val_examples` of) the validation split,
  higher is better, when the config evaluates: answers are generated as eval would generate them.
  The metric ranks first and validation loss breaks ties.

The search is coordinate-wise, which spends a small budget where it matters: the first trial is the
config as given (so the table says how far the defaults are from the best), then each axis in turn
is tried at every value with the other keys at the best values found so far. Trials stop when the
budget is spent (a trial is not started when the mean trial so far would overrun it). The sweep
folder gets sweep.md (the table, best first), sweep.json (every trial and setting) and best.yaml
(the winning config, which `tunesmith train` runs as is), plus each trial's run folder in trials/.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.config import PATH_KEYS, RunConfig, apply_overrides, dump_yaml, validate
from tunesmith.errors import ConfigError, TrainingDiverged
from tunesmith.events import Events
from tunesmith.io_utils import atomic_file, write_json

DEFAULT_GRID = ["train.lr=1e-4,3e-4,1e-3,3e-3", "method.r=8,16,32", "train.epochs=1,2,3"]
RANK_KEY, ALPHA_KEY = "method.r", "method.alpha"


class SweepOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grid: list[str] = Field(default_factory=lambda: list(DEFAULT_GRID), description=(
        "axes searched in this order, each KEY=V1,V2,... for any config key (repeatable); method.r also scales "
        "method.alpha to keep alpha/r unless method.alpha is an axis too; an axis the method lacks is skipped"))
    budget_minutes: float = Field(60.0, gt=0, description=(
        "wall-clock budget: no trial starts once it is spent, or when the mean trial so far would overrun it "
        "(the config's own trial always runs)"))
    max_trials: int = Field(12, gt=0, description="at most this many trials, the config's own included")
    val_split: float = Field(0.1, gt=0.0, lt=1.0, description=(
        "share of train held out to score trials when the config sets neither data.val nor a data.val_split number "
        "(best.yaml keeps it, so it reproduces the winning trial)"))
    val_examples: int = Field(32, ge=0, description=(
        "validation examples each trial answers to score the config's first eval metric; 0 means all"))
    out: str = Field("runs/sweep", description="sweep folder: sweep.md, sweep.json, best.yaml, trials/")


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple

    @classmethod
    def parse(cls, text: str) -> Axis:
        key, sep, values = text.partition("=")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not items:
            raise ConfigError(f"--grid {text!r}: expected KEY=V1,V2,..., e.g. train.lr=1e-4,1e-3")
        return cls(key.strip(), tuple(_value(v) for v in items))


def _value(text: str):
    """A grid value as YAML reads it, except that "1e-3" (a string to YAML 1.1) is the number it means."""
    value = apply_overrides({}, [f"v={text}"])["v"]
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass
class Trial:
    index: int
    overrides: dict                 # the keys this trial changed from the config, as given to it
    settings: dict                  # every swept key's value in the trial's config (the table's columns)
    run_dir: str
    seconds: float = 0.0
    steps: int = 0
    val_loss: float | None = None
    metric: float | None = None
    error: str | None = None        # why the trial has no score (training diverged)

    def rank_key(self) -> tuple:
        """Sort key, best first: metric descending, then validation loss ascending; unknown values last."""
        metric = -self.metric if _finite(self.metric) else math.inf
        loss = self.val_loss if _finite(self.val_loss) else math.inf
        return metric, loss, self.index


@dataclass
class SweepResult:
    out_dir: Path
    trials: list[Trial]                       # in the order they ran
    ranked: list[Trial]                       # best first
    metric: str | None                        # the metric that ranks trials, None: validation loss alone
    best_config: RunConfig
    stopped: str | None                       # why the search ended before trying every value, if it did
    not_run: list[dict] = field(default_factory=list)
    skipped_axes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Trial:
        return self.ranked[0]


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _lookup(raw: dict, key: str):
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _format(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Sweep:
    """One sweep of `cfg`; `run` does the search. Every axis value is validated against the config
    before the first trial starts, so a typo fails in a second, not after an hour of training."""

    def __init__(self, cfg: RunConfig, options: SweepOptions, events: Events | None = None):
        self.cfg, self.options = cfg, options
        self.events = events if events is not None else Events()
        self.out = Path(options.out)
        self.trials: list[Trial] = []
        self.base = self._with_validation(cfg)
        self.metric = cfg.eval.metrics[0] if cfg.eval.enabled and cfg.eval.metrics else None
        axes = [Axis.parse(text) for text in options.grid]
        dumped = self.base.model_dump()
        self.skipped_axes = [a.key for a in axes if a.key.startswith("method.") and _lookup(dumped, a.key) is None]
        self.axes = [a for a in axes if a.key not in self.skipped_axes]
        keys = [a.key for a in self.axes]
        self.scale_alpha = RANK_KEY in keys and ALPHA_KEY not in keys and _lookup(dumped, ALPHA_KEY) is not None
        self.columns = keys + ([ALPHA_KEY] if self.scale_alpha else [])
        for axis in self.axes:
            for value in axis.values:
                self.config_for({axis.key: value})

    def _with_validation(self, cfg: RunConfig) -> RunConfig:
        """`cfg` with a validation split to score trials on, when it may have none (`auto` holds none
        out of small data)."""
        if cfg.data.val or (cfg.data.val_split != "auto" and cfg.data.val_split > 0):
            return cfg
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"val_split": self.options.val_split})})

    def config_for(self, overrides: dict) -> RunConfig:
        """The user-facing config of a trial: the config with `overrides` (and alpha following r)."""
        # JSON is YAML: each value goes through the same parsing and checks as a `--set`.
        raw = apply_overrides(self.base.model_dump(), [f"{k}={json.dumps(v)}" for k, v in overrides.items()], "--grid")
        if self.scale_alpha and RANK_KEY in overrides:
            ratio = self.base.method.alpha / self.base.method.r
            raw["method"]["alpha"] = ratio * overrides[RANK_KEY]
        return validate(raw, "--grid")

    def _trial_config(self, cfg: RunConfig, index: int) -> RunConfig:
        """What a trial runs: `cfg` scored on the validation split only (no baselines, no test set,
        no forgetting or perplexity checks, no merge), in its own folder."""
        evaluate = self.metric is not None
        eval_cfg = cfg.eval.model_copy(update={
            "enabled": evaluate, "data": None, "metrics": cfg.eval.metrics, "baselines": [],
            "max_examples": self.options.val_examples, "perplexity": False, "regression": False,
            "code_tasks": None, "judge": None, "compare_to": None, "lm_eval_tasks": []})
        output = cfg.output.model_copy(update={"dir": str(self.out / "trials" / f"{index:02d}"), "merge": False,
                                               "overwrite": True})
        return cfg.model_copy(update={"eval": eval_cfg, "output": output})

    def _plan(self):
        """Yield each trial's overrides in search order; `self.trials` grows between yields."""
        yield {}
        for axis in self.axes:
            start = dict(self.best_overrides())
            for value in axis.values:
                yield {**start, axis.key: value}

    def best_overrides(self) -> dict:
        return min(self.trials, key=Trial.rank_key).overrides if self.trials else {}

    def run(self) -> SweepResult:
        from tunesmith.pipeline import run as run_pipeline

        self.trials = []
        seen: set[str] = set()
        not_run: list[dict] = []
        stopped = None
        started = time.monotonic()
        budget = self.options.budget_minutes * 60
        for overrides in self._plan():
            cfg = self.config_for(overrides)
            fingerprint = dump_yaml(cfg)
            if fingerprint in seen:       # e.g. r=16 when the config already has r=16
                continue
            elapsed = time.monotonic() - started
            mean = elapsed / len(self.trials) if self.trials else 0.0
            reason = None
            if len(self.trials) >= self.options.max_trials:
                reason = f"max_trials={self.options.max_trials} reached"
            elif self.trials and elapsed + mean > budget:
                reason = (f"budget of {self.options.budget_minutes:g} min: {elapsed / 60:.1f} min spent, "
                          f"a trial takes {mean / 60:.1f} min")
            if reason:
                stopped = stopped or reason
                not_run.append(overrides)
                continue
            seen.add(fingerprint)
            trial = Trial(len(self.trials), overrides, {k: _lookup(cfg.model_dump(), k) for k in self.columns},
                          str(self.out / "trials" / f"{len(self.trials):02d}"))
            t0 = time.monotonic()
            self.events.message(f"sweep trial {trial.index}: {describe(overrides)}")
            try:
                result = run_pipeline(self._trial_config(cfg, trial.index), events=self.events)
            except TrainingDiverged as exc:   # a too-high lr is a finding, not the end of the search
                trial.error = exc.message
            else:
                trial.steps = result.train.steps
                # The numbers the run used (its saved config has `auto` settings resolved).
                ran = yaml.safe_load((Path(result.run_dir) / "config.yaml").read_text(encoding="utf-8"))
                trial.settings = {k: _lookup(ran, k) for k in self.columns}
                trial.val_loss = result.train.best_val_loss
                if self.metric is not None and result.eval_report:
                    trial.metric = result.eval_report["systems"]["tuned"].get(self.metric)
            trial.seconds = time.monotonic() - t0
            self.trials.append(trial)
            self.events.message(f"sweep trial {trial.index}: {describe(trial.overrides)} -> {self._scores(trial)} "
                                f"({trial.seconds:.0f} s)")
            if len(self.trials) == 1 and self.metric is not None and trial.metric is None:
                self.events.message(f"sweep: the trials report no {self.metric}; ranking by validation loss", "warning")
        ranked = sorted(self.trials, key=Trial.rank_key)
        best_config = self.config_for(ranked[0].overrides)
        result = SweepResult(self.out, self.trials, ranked, self.metric, best_config, stopped,
                             [{"overrides": o} for o in not_run], self.skipped_axes)
        write_outputs(result, self.options, self.columns, time.monotonic() - started)
        return result

    def _scores(self, trial: Trial) -> str:
        if trial.error:
            return f"failed: {trial.error}"
        loss = f"val_loss {trial.val_loss:.4f}" if _finite(trial.val_loss) else "val_loss -"
        return loss + (f", {self.metric} {trial.metric:.3f}" if self.metric and _finite(trial.metric) else "")


def describe(overrides: dict) -> str:
    return ", ".join(f"{k}={_format(v)}" for k, v in overrides.items()) or "the config as given"


def run_sweep(cfg: RunConfig, options: SweepOptions | None = None, events: Events | None = None) -> SweepResult:
    return Sweep(cfg, options or SweepOptions(), events).run()


# --- outputs ---------------------------------------------------------------------------------------

def absolute_paths(cfg: RunConfig) -> RunConfig:
    """`cfg` with its file settings made absolute, so the written config runs from any folder."""
    raw = cfg.model_dump()
    for section, key in PATH_KEYS:
        value = raw.get(section, {}).get(key)
        if value and Path(value).exists():
            raw[section][key] = str(Path(value).resolve())
    return validate(raw)


def table_rows(result: SweepResult, columns: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["rank", "trial", *columns, "steps", "val_loss", *([result.metric] if result.metric else []), "seconds"]
    rows = []
    for rank, t in enumerate(result.ranked, 1):
        row = [str(rank), str(t.index), *(_format(t.settings[c]) for c in columns), str(t.steps),
               f"{t.val_loss:.4f}" if _finite(t.val_loss) else "-"]
        if result.metric:
            row.append(f"{t.metric:.3f}" if _finite(t.metric) else "-")
        rows.append([*row, f"{t.seconds:.0f}"])
    return header, rows


def markdown(result: SweepResult, columns: list[str], elapsed: float) -> str:
    header, rows = table_rows(result, columns)
    by = f"{result.metric} on the validation split (higher is better), then validation loss" if result.metric \
        else "validation loss (lower is better)"
    lines = [f"# Sweep: {len(result.trials)} trials in {elapsed / 60:.1f} min, ranked by {by}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"Trial 0 is the config as given. Best: trial {result.best.index} ({describe(result.best.overrides)}), "
                  "written to best.yaml."]
    for t in result.trials:
        if t.error:
            lines.append(f"Trial {t.index} ({describe(t.overrides)}) has no score: {t.error}")
    if result.stopped:
        lines.append(f"Stopped early: {result.stopped}; not run: "
                     + "; ".join(describe(n["overrides"]) for n in result.not_run) + ".")
    if result.skipped_axes:
        lines.append(f"Skipped axes (the method has no such key): {', '.join(result.skipped_axes)}.")
    return "\n".join(lines) + "\n"


def write_outputs(result: SweepResult, options: SweepOptions, columns: list[str], elapsed: float) -> None:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    best = absolute_paths(result.best_config)
    with atomic_file(out / "best.yaml") as fh:
        fh.write(f"# tunesmith sweep's best trial ({describe(result.best.overrides)}); "
                 "run it with `tunesmith train best.yaml`\n" + dump_yaml(best))
    write_json(out / "sweep.json", {
        "options": options.model_dump(), "ranked_by": result.metric or "val_loss", "columns": columns,
        "elapsed_s": elapsed, "stopped": result.stopped, "not_run": result.not_run,
        "skipped_axes": result.skipped_axes, "best_trial": result.best.index,
        "trials": [asdict(t) for t in result.trials], "ranking": [t.index for t in result.ranked]})
    with atomic_file(out / "sweep.md") as fh:
        fh.write(markdown(result, columns, elapsed))
