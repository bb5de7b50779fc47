"""A fine-tuning job request (OpenAI's `POST /v1/fine_tuning/jobs` body) and the run config it becomes.

OpenAI's knobs map onto the run config like this. The job is created with numbers, as OpenAI reports them:
"auto" takes what the run config's own "auto" rules give for this base, method and file (train/auto.py):

| request                                   | run config                                  |
|-------------------------------------------|---------------------------------------------|
| `n_epochs`                                | `train.epochs` (auto: at least 100 steps, at most 5 passes) |
| `batch_size`                              | `train.batch_size` (auto: 8, at most the examples) |
| `learning_rate_multiplier`                | `train.lr` = multiplier x the method's `auto` rate for this base and objective |
| `seed` (random when absent)               | `train.seed`                                |
| `method.type: dpo`, `dpo.hyperparameters.beta` | `objective.name: dpo`, `objective.beta` |
| `method.name` (our extension)             | `method.name` (lora, qlora, dora, ...)      |
| `metadata` keys with a dot ("train.max_steps": "4") | that run-config key (read as YAML, like `--set`); not `RESERVED_KEYS` |

A checkpoint is kept at the end of every epoch (the last three), as OpenAI does.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunesmith.config import RunConfig, apply_overrides, validate
from tunesmith.errors import ConfigError
from tunesmith.train import auto

PREFERENCE_FORMATS = ("preference", "openai_preference")
SUFFIX_RE = re.compile(r"[A-Za-z0-9._-]{0,64}")
KEEP_CHECKPOINTS = 3


class _Open(BaseModel):
    # OpenAI adds fields over time; a client sending one we do not know must not fail.
    model_config = ConfigDict(extra="allow")


class Hyperparameters(_Open):
    n_epochs: Literal["auto"] | int | None = Field(None, ge=1)
    batch_size: Literal["auto"] | int | None = Field(None, ge=1)
    learning_rate_multiplier: Literal["auto"] | float | None = Field(None, gt=0)
    beta: Literal["auto"] | float | None = Field(None, gt=0)     # dpo only


class _MethodHyper(_Open):
    hyperparameters: Hyperparameters | None = None


class MethodSpec(_Open):
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: _MethodHyper | None = None
    dpo: _MethodHyper | None = None
    name: str | None = Field(None, description="our extension: the fine-tuning method (lora, qlora, dora, ...)")

    def hyperparameters(self) -> Hyperparameters | None:
        section = self.dpo if self.type == "dpo" else self.supervised
        return section.hyperparameters if section is not None else None


class JobCreate(_Open):
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = None
    metadata: dict[str, str] | None = None
    hyperparameters: Hyperparameters | None = None
    method: MethodSpec | None = None
    integrations: list[Any] | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        if value is not None and not SUFFIX_RE.fullmatch(value):
            raise ValueError("use at most 64 of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict | None) -> dict | None:
        if value is not None and len(value) > 16:
            raise ValueError("at most 16 keys")
        return value

    def merged_hyperparameters(self) -> Hyperparameters:
        """`method.<type>.hyperparameters` over the legacy top-level `hyperparameters`."""
        merged = (self.hyperparameters or Hyperparameters()).model_dump(exclude_none=True)
        if self.method is not None and self.method.hyperparameters() is not None:
            merged.update(self.method.hyperparameters().model_dump(exclude_none=True))
        return Hyperparameters(**merged)


# Run-config keys a client may not set: the service chooses the base, the data, where the run is
# written, and nothing may make the worker read a path or reach a URL of the client's choosing.
RESERVED_SECTIONS = ("model", "output")
RESERVED_KEYS = ("data.train", "data.val", "eval.data", "eval.code_tasks", "eval.judge", "eval.judge_url",
                 "eval.judge_prompt", "eval.compare_to", "eval.lm_eval_tasks")


def check_client_key(key: str) -> None:
    key = key.strip()
    if key.split(".")[0] in RESERVED_SECTIONS or any(key == k or key.startswith(k + ".") for k in RESERVED_KEYS):
        raise ConfigError(f"metadata: '{key}' is set by the fine-tuning service, not by a job request",
                          hint="the base is the server's model, the data are the job's files")


def method_type(body: JobCreate) -> str:
    return body.method.type if body.method is not None else "supervised"


def build_config(body: JobCreate, *, base_path: str, train_path: str, train_records: int,
                 val_path: str | None, out_dir: str) -> tuple[dict, int]:
    """(raw run config, seed) for the job: validated here so a bad metadata key fails the request."""
    hp = body.merged_hyperparameters()
    defaults = RunConfig()
    seed = body.seed if body.seed is not None else random.randrange(2**31)
    batch = hp.batch_size if isinstance(hp.batch_size, int) else max(1, min(defaults.train.batch_size, train_records))
    epochs = hp.n_epochs if isinstance(hp.n_epochs, int) else auto.auto_epochs(train_records, batch)
    multiplier = hp.learning_rate_multiplier if isinstance(hp.learning_rate_multiplier, (int, float)) else 1.0
    raw: dict = {
        "model": {"base": base_path},
        "data": {"train": train_path, "val": val_path, "val_split": 0.0},
        "train": {"epochs": epochs, "batch_size": batch, "seed": seed,
                  "save_every": math.ceil(train_records / batch), "keep_checkpoints": KEEP_CHECKPOINTS},
        "eval": {"enabled": val_path is not None},
        "output": {"dir": out_dir, "merge": False, "overwrite": True},
    }
    if body.method is not None and body.method.name:
        raw["method"] = {"name": body.method.name}
    if method_type(body) == "dpo":
        raw["objective"] = {"name": "dpo", **({"beta": hp.beta} if isinstance(hp.beta, (int, float)) else {})}
    overrides = [f"{k}={v}" for k, v in (body.metadata or {}).items() if "." in k]
    for item in overrides:
        check_client_key(item.split("=", 1)[0])
    raw = apply_overrides(raw, overrides, source="metadata")
    cfg = validate(raw, "metadata")
    from tunesmith.methods.registry import get_method

    method = get_method(cfg.method.name)
    if method.kind != "adapter":
        # The server serves adapters on its one base; a method that rewrites the model has no `ft:` model here.
        raise ConfigError(f"method.name: '{cfg.method.name}' trains the whole model; a job here must train an adapter",
                          hint="use lora, qlora, dora or another adapter method (`tunesmith methods` lists them)")
    if cfg.train.lr == "auto":   # a metadata "train.lr" wins over the multiplier
        raw["train"]["lr"] = float(f"{auto_rate(cfg, base_path) * multiplier:.6g}")
    return raw, seed


def auto_rate(cfg: RunConfig, base_path: str) -> float:
    """What `train.lr: auto` gives this job's method and objective on the server's base (train/auto.py)."""
    from tunesmith.methods.registry import get_method
    from tunesmith.train.objectives import get_objective

    return auto.auto_lr(get_method(cfg.method.name).default_lr, base_hidden_size(base_path),
                        get_objective(cfg.objective.name).lr_factor)


def base_hidden_size(base_path: str) -> int | None:
    config = Path(base_path) / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("hidden_size")
    except (OSError, ValueError):
        return None


def reported_hyperparameters(raw: dict) -> dict:
    """The numbers the job trains with, as OpenAI reports them on the job."""
    train = raw["train"]
    cfg = validate(raw, "job")
    hp = {"n_epochs": train["epochs"], "batch_size": train["batch_size"],
          "learning_rate_multiplier": float(f"{train['lr'] / auto_rate(cfg, raw['model']['base']):.6g}")}
    if cfg.objective.name == "dpo":
        hp["beta"] = getattr(cfg.objective, "beta", None)
    return hp


def fine_tuned_name(base_name: str, job: dict) -> str:
    """`ft:<base>:<org>:<suffix>:<job id>`, OpenAI's form (an empty suffix leaves `::`)."""
    return f"ft:{base_name}:{job['org']}:{job['request'].get('suffix') or ''}:{job['id']}"
