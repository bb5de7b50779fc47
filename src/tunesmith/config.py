"""The run config: one YAML file per run, validated with pydantic.

Every key has a default and a one-line description (the `description` of its Field), which
`tunesmith config init` turns into a commented starter file. Unknown keys are errors with a
"did you mean" suggestion; wrong types name the key and the expected type.

Two sections are open-ended and read their vocabulary from a registry: `method:` is validated
against the options model of the method it names (`tunesmith.methods`), and `data.format` against
the registered input formats (`tunesmith.data.formats`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tunesmith.data import formats as data_formats
from tunesmith.errors import ConfigError
from tunesmith.methods import registry as method_registry
from tunesmith.methods.options import MethodOptions
from tunesmith.train import auto
from tunesmith.train.objective_options import ObjectiveOptions, parse_objective_section


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def auto_or_int(value: Any, *, above: int) -> Any:
    """A setting that is "auto" (read from the data) or a whole number above `above`. The
    command line and `--set` may give the number as text."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():   # 512.0: an integer, as a plain int field takes it
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > above:
        return value
    raise PydanticCustomError("auto_or_int", "expected 'auto' or a whole number above {above}", {"above": above})


def auto_or_number(value: Any, *, above: float = 0.0, below: float | None = None) -> Any:
    """A setting that is "auto" (resolved by the run) or a number above `above` (and below `below`)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > above and (below is None or value < below):
        return float(value)
    bounds = f"above {above:g}" + (f" and below {below:g}" if below is not None else "")
    raise PydanticCustomError("auto_or_number", "expected 'auto' or a number {bounds}", {"bounds": bounds})


class ModelConfig(Section):
    base: str = Field("default", description="base model: 'default' (embedded SmolLM2-135M-Instruct), a local HF folder, a cached hub id, or a .gguf file")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("fp32",
        description="dtype the base weights are loaded in (training mixed precision is train.precision)")
    adapter: str | None = Field(None, description=(
        "start from this trained adapter folder (a run's adapter/): training continues it; for dpo/kto it is also "
        "the frozen reference. The method's options must match the adapter's (r, target_modules)"))


class MixSource(Section):
    """One source of a `data.train` mix (data/mix.py)."""

    path: str = Field(description="a data file or folder, or 'general' (the shipped general instruction set)")
    weight: float | None = Field(None, gt=0, description=("share of the mix (weights are normalised to sum to 1); the first "
                                  "source is used whole and sets the mix's size, later ones repeat when short"))
    count: int | None = Field(None, ge=1, description="examples to take (repeated when the source has fewer)")
    answers: Literal["as_written", "base"] = Field("as_written", description=(
        "'base': each answer is rewritten by the base model being tuned, sampled before training (self-distillation; "
        "on the quickstart it shrank the general-QA drop the written answers left, docs/data.md)"))

    @model_validator(mode="after")
    def _one_of(self):
        if self.weight is not None and self.count is not None:
            raise ValueError(f"{self.path}: give a weight or a count, not both")
        return self


class DataConfig(Section):
    train: str | list[MixSource] | None = Field(None, description=(
        "training data file or folder (.jsonl, .json, .parquet, .csv, datasets folder), or a mix: a list of "
        "{path, weight} or {path, count} (path 'general': the shipped general instruction set)"))
    val: str | None = Field(None, description="validation data; when empty, val_split of train is held out")
    val_split: Literal["auto"] | float = Field("auto", description=auto.DESCRIPTIONS["val_split"])
    format: str = Field("auto", description="input format; 'auto' detects it from the first record that matches a format; "
                        f"or one of {', '.join(data_formats.FORMATS)}")
    max_len: Literal["auto"] | int = Field("auto", description=(
        "maximum tokens per example (and per packed row); 'auto': the smallest multiple of 64 that fits 99 % of "
        "the training examples, capped by the model's context (the run states the number)"))
    overlong: Literal["drop", "truncate"] = Field("drop", description="what to do with examples longer than max_len")
    packing: bool = Field(True, description="pack several examples into each row (no attention across examples)")
    template: Literal["auto", "chatml", "llama3", "alpaca"] | None = Field("auto",
        description="chat template: 'auto' uses the tokenizer's own; a name overrides it")
    train_on_inputs: bool = Field(False, description="compute the loss on prompt tokens too, not only on assistant tokens")
    system_prompt: str | None = Field(None, description="system message prepended to every conversation that has none")

    @field_validator("max_len", mode="before")
    @classmethod
    def _max_len(cls, value: Any) -> Any:
        return auto_or_int(value, above=8)

    @field_validator("train", mode="before")
    @classmethod
    def _mix(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        if not value:
            raise ValueError("an empty list of sources")
        sources = []
        for i, v in enumerate(value, start=1):
            item = {"path": v} if isinstance(v, str) else v
            if not isinstance(item, dict):
                raise ValueError(f"source {i}: expected a path or {{path, weight | count}}, got {type(v).__name__}")
            unknown = sorted(set(item) - set(MixSource.model_fields))
            if unknown:
                guess = difflib.get_close_matches(unknown[0], list(MixSource.model_fields), n=1)
                raise ValueError(f"source {i}: unknown key '{unknown[0]}'" + (f" (did you mean '{guess[0]}'?)" if guess else "")
                                 + "; a source has path, weight or count, and answers")
            try:
                sources.append(MixSource.model_validate(item))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"source {i}{' ' + where if where else ''}: {first['msg'].removeprefix('Value error, ')}") from None
        weighted = [s.weight is not None for s in sources]
        if any(weighted) and not all(weighted):
            raise ValueError("give every source a weight, or none (then counts, or whole sources)")
        if len(sources) > 1 and sources[0].answers == "base":
            raise ValueError("source 1 is the task's data, trained as written; answers: base is for the mix-ins after it")
        return sources

    @field_validator("val_split", mode="before")
    @classmethod
    def _val_split(cls, value: Any) -> Any:
        try:
            if float(value) == 0:
                return 0.0   # none held out: a valid setting the "above 0" rule would refuse
        except (TypeError, ValueError):
            pass
        return auto_or_number(value, above=0.0, below=1.0)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        problem = data_formats.unknown_format(value)
        if problem:
            raise PydanticCustomError("data_format", "{message}", {"message": problem})
        return value


class TrainConfig(Section):
    epochs: Literal["auto"] | float = Field("auto", description=auto.DESCRIPTIONS["epochs"])
    max_steps: int = Field(0, ge=0, description="optimizer steps to run; 0 means use epochs")
    lr: Literal["auto"] | float = Field("auto", description=auto.DESCRIPTIONS["lr"])
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="learning-rate schedule after warmup")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="fraction of steps spent warming up linearly from 0")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0.0, description="gradient clipping norm; 0 disables clipping")
    batch_size: int = Field(8, gt=0, description="examples per optimizer step")
    micro_batch_size: int = Field(0, ge=0, description="examples per forward pass; 0 means batch_size (no accumulation)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="mixed precision: 'auto' picks bf16 where the hardware has it")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    save_every: int = Field(0, ge=0, description="checkpoint every N optimizer steps; 0 saves only at the end")
    keep_checkpoints: int = Field(2, ge=1, description="how many recent checkpoints to keep")
    eval_every: Literal["auto"] | int = Field("auto", description=auto.DESCRIPTIONS["eval_every"])
    early_stopping_patience: Literal["auto"] | int = Field("auto", description=auto.DESCRIPTIONS["early_stopping_patience"])
    early_stopping_min_delta: float = Field(0.0, ge=0.0, description="smallest val-loss drop that counts as improvement")
    seed: int = Field(42, description="random seed for init, shuffling and dropout")
    log_every: int = Field(1, ge=1, description="write a metrics.jsonl row every N steps")

    @field_validator("lr", "epochs", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        return auto_or_number(value)

    @field_validator("eval_every", "early_stopping_patience", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        return auto_or_int(value, above=-1)

    def resolved(self) -> bool:
        """True when no setting is "auto" (what the trainer needs: the run resolves them first)."""
        return "auto" not in (self.lr, self.epochs, self.eval_every, self.early_stopping_patience)


class EvalConfig(Section):
    enabled: bool = Field(True, description="evaluate after training")
    data: str | None = Field(None, description="held-out data to score; empty means data.val")
    metrics: list[str] = Field(default_factory=lambda: ["exact_match"], description="metrics to compute; `tunesmith eval --help` lists them")
    baselines: list[str] = Field(default_factory=lambda: ["zero-shot", "few-shot"], description=(
        "base-model baselines to score beside the tuned model: zero-shot, few-shot, retrieval-few-shot (the most "
        "similar training examples by BM25), rag (passages of eval.docs by BM25); docs/eval.md describes them"))
    few_shot_k: int = Field(3, ge=1, description="examples from train shown in the few-shot and retrieval-few-shot baselines")
    docs: str | None = Field(None, description="folder of .txt, .md and .pdf documents the rag baseline retrieves passages from")
    rag_k: int = Field(3, ge=1, description="passages the rag baseline puts into each prompt")
    chunk_words: int = Field(120, ge=8, description="rag: words per document passage")
    chunk_overlap: int = Field(30, ge=0, description="rag: words each passage shares with the one before it (< chunk_words)")
    max_new_tokens: Literal["auto"] | int = Field("auto", description=(
        "generation budget per example; 'auto': the longest reference answer + 25 % (at least + 16), rounded up to "
        "a multiple of 16, at most 2048 (programs of code_tasks get at least 512)"))
    batch_size: int = Field(64, gt=0, description="replies decoded together (rows join as others finish); on a CPU "
                            "each decode step reads every weight once whatever the batch, so more rows are faster "
                            "until memory runs out; fewer run when their KV cache (rows x tokens) would not fit "
                            "half the free memory")
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy decoding")
    stop_loops: bool = Field(True, description=(
        "stop a reply whose end repeats one block more than twice as often as any reference answer does (at least "
        "4 times; digits ignored, so counting on is a loop); the report counts the replies stopped"))
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling when temperature > 0")
    prompt_lookup: int = Field(0, ge=0, description=(
        "speculative decoding by prompt lookup: draft up to N tokens per step copied from the prompt and verify them in "
        "one pass (greedy replies are unchanged, sampled ones keep their distribution; used while at most 4 replies "
        "decode together); 0 = off"))
    draft_model: str | None = Field(None, description=(
        "speculative decoding with a smaller model that shares the tokenizer (anything model.base accepts): it drafts "
        "eval.draft_tokens tokens per step and the evaluated model verifies them (greedy replies are unchanged); empty = off"))
    draft_tokens: int = Field(4, ge=1, description="draft_model: tokens drafted per step")
    eft_large: str | None = Field(None, description=(
        "emulated fine-tuning: a larger base model sharing the tokenizer (anything model.base accepts) that the tuned "
        "system's answers are decoded with, up-scaling the fine-tune (docs/generation.md); empty = off"))
    eft_beta: float = Field(1.0, ge=0.0, description="eft_large: weight of the fine-tune's log-prob delta (0 = the large base alone)")
    max_examples: int = Field(0, ge=0, description="score at most N examples; 0 means all")
    seed: int = Field(0, description="seed for few-shot draws and sampling")
    perplexity: bool = Field(True, description="also report each system's perplexity on the eval data (response tokens of chats, all tokens of raw text)")
    ppl_window: int = Field(512, ge=2, description="perplexity: tokens per sliding window")
    ppl_stride: int = Field(256, gt=0, description="perplexity: tokens between window starts (<= ppl_window; smaller = more context, slower)")
    regression: bool = Field(True, description="score base vs tuned on the shipped general QA and text set to catch forgetting")
    regression_acc_drop: float = Field(0.05, ge=0.0, description="flag forgetting when general QA accuracy falls by more than this (absolute)")
    regression_ppl_rise: float = Field(0.10, ge=0.0, description="flag forgetting when general-text perplexity rises by more than this fraction")
    regression_max_new_tokens: int = Field(24, gt=0, description=(
        "generation budget for the regression QA answers (room to restate the question, as small models do)"))
    overfit_gap: float = Field(0.5, ge=0.0, description="flag overfitting when validation loss exceeds train loss by more than this (nats)")
    code_tasks: str | None = Field(None, description="JSONL of code tasks (prompt, test, optional entry_point) for pass@k")
    code_samples: int = Field(5, gt=0, description="programs sampled per code task (n of pass@k)")
    pass_k: list[int] = Field(default_factory=lambda: [1], description="k values of pass@k to report (each <= code_samples)")
    code_timeout_s: float = Field(5.0, gt=0.0, description="sandbox wall-clock limit per program, seconds")
    code_memory_mb: int = Field(512, gt=16, description="sandbox address-space limit per program, MiB")
    code_workers: int = Field(1, gt=0, description="programs run in parallel in the sandbox")
    judge: str | None = Field(None, description="pairwise judge of tuned vs the best baseline: local:MODEL or openai:MODEL (empty = off)")
    judge_url: str | None = Field(None, description="base URL of an OpenAI-compatible judge endpoint (empty = api.openai.com)")
    judge_prompt: str | None = Field(None, description="judge prompt file with {question} {reference} {answer_a} {answer_b} (empty = shipped one)")
    compare_to: str | None = Field(None, description="another model or adapter folder scored beside tuned as system 'compare'")
    lm_eval_tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness tasks run on base and tuned when it is installed")
    lm_eval_limit: int = Field(0, ge=0, description="lm-evaluation-harness: examples per task; 0 means all")

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _max_new_tokens(cls, value: Any) -> Any:
        return auto_or_int(value, above=0)


class OutputConfig(Section):
    dir: str = Field("runs/latest", description="run folder: config, metrics, checkpoints, adapter, reports")
    merge: bool = Field(False, description="also write a merged HF model to <dir>/merged")
    overwrite: bool = Field(True, description="replace a finished run in the same folder")


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig, description="base model")
    data: DataConfig = Field(default_factory=DataConfig, description="training and validation data")
    # SerializeAsAny: dumped as the chosen method's model, not as the bare base class.
    method: SerializeAsAny[MethodOptions] = Field(default_factory=lambda: method_registry.method_options(),
                                                  description="fine-tuning method")
    objective: SerializeAsAny[ObjectiveOptions] = Field(default_factory=ObjectiveOptions,
                                                         description="what is optimised: sft, or a preference objective (dpo, orpo, kto)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="evaluation after training")
    output: OutputConfig = Field(default_factory=OutputConfig, description="where results go")

    @field_validator("method", mode="before")
    @classmethod
    def _method_options(cls, value):
        return method_registry.parse_method_section(value)

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_options(cls, value):
        return parse_objective_section(value)


# --- loading -----------------------------------------------------------------------------------

_TYPE_WORDS = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
    "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
    "model_type": "a mapping of keys", "dict_type": "a mapping of keys", "literal_error": None,
}


def _section_fields(path: tuple) -> list[str]:
    cls: type[BaseModel] = RunConfig
    for part in path:
        field = cls.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        cls = field.annotation
    return list(cls.model_fields)


def _describe(err: dict, source: str) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind in ("method_option", "objective_option"):
        return f"{source}: {err['msg']}"
    if kind == "data_format":
        return f"{source}: {key}: {err['msg']}"
    if kind == "extra_forbidden":
        known = _section_fields(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
        where = ".".join(str(p) for p in loc[:-1]) or "top level"
        msg = f"{source}: unknown key '{key}'"
        if guess:
            prefix = ".".join(str(p) for p in loc[:-1])
            msg += f" (did you mean '{prefix + '.' if prefix else ''}{guess[0]}'?)"
        else:
            msg += f"; keys allowed in {where}: {', '.join(known)}"
        return msg
    got = err.get("input")
    expected = _TYPE_WORDS.get(kind)
    if expected:
        return f"{source}: {key}: expected {expected}, got {got!r}"
    return f"{source}: {key}: {err['msg']} (got {got!r})"


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply `section.key=value` overrides; values are parsed as YAML (so 1e-4, true, [a, b] work)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source} {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source} {key}: '{part}' is not a section")
        node[parts[-1]] = _parse_scalar(value)
    return raw


def validate(raw: dict, source: str = "config") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (model, data, method, train, eval, output)")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, source) for e in exc.errors()]
        raise ConfigError("\n".join(lines), hint="`tunesmith config init` writes a commented starter file") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict = {}
    source = "--set"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        validate(raw, source)  # the file's own mistakes are reported against the file, before overrides
        # Relative data paths are relative to the config file, like a Makefile's. The overrides go
        # onto the file's own keys (not a dump with every default filled in), so which keys the
        # user set stays known: `--set method.name=vera` on a LoRA config carries no LoRA keys over.
        _resolve_relative(raw, path.parent)
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, source)


# The (section, key) settings that name files: relative to the config file when read from one.
PATH_KEYS = (("model", "adapter"), ("data", "train"), ("data", "val"), ("eval", "data"), ("eval", "code_tasks"),
             ("eval", "judge_prompt"), ("eval", "docs"))


def _relative(value: str, base: Path, keep: tuple[str, ...] = ()) -> str:
    if not value or Path(value).is_absolute():
        return value
    candidate = base / value
    if candidate.exists() or (not Path(value).exists() and value not in keep):
        return str(candidate)
    return value


def _resolve_relative(raw: dict, base: Path) -> None:
    for section, key in PATH_KEYS:
        value = (raw.get(section) or {}).get(key)
        if isinstance(value, list):  # a data.train mix: each source's path; builtin names stay names
            from tunesmith.data.mix import BUILTIN

            raw[section][key] = [{**v, "path": _relative(v["path"], base, tuple(BUILTIN))}
                                 if isinstance(v, dict) and isinstance(v.get("path"), str)
                                 else _relative(v, base, tuple(BUILTIN)) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str):
            raw[section][key] = _relative(value, base)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False, allow_unicode=True)


def _key_line(key: str, field, indent: str = "  ") -> str:
    default = field.get_default(call_default_factory=True)
    value = yaml.safe_dump({key: default}, default_flow_style=True, width=1000).strip()[1:-1]
    return f"{indent}{value}  # {field.description}"


def section_model(name: str) -> type[BaseModel]:
    """The model of a section of the default config (for `method`, the default method's options)."""
    return type(getattr(RunConfig(), name))


def starter_yaml() -> str:
    """A commented config holding every key at its default; other methods' keys as comments."""
    out = ["# tunesmith run config. Every key is optional; shown here at its default.",
           "# Run with: tunesmith train THIS_FILE   (override any key: --set train.lr=1e-4)", ""]
    for name, field in RunConfig.model_fields.items():
        section_cls = section_model(name)
        out.append(f"{name}:  # {field.description}")
        out += [_key_line(key, sub) for key, sub in section_cls.model_fields.items()]
        if name == "method":
            out += _other_method_keys(section_cls)
        if name == "objective":
            out += _other_objective_keys(section_cls)
        out.append("")
    return "\n".join(out)


def _other_objective_keys(shown: type[BaseModel]) -> list[str]:
    from tunesmith.train.objective_options import OPTIONS

    lines, seen = [], set(shown.model_fields)
    for name, model in OPTIONS.items():
        keys = {k: f for k, f in model.model_fields.items() if k not in seen}
        if keys:
            lines.append(f"  # with objective.name: {name}")
            lines += [_key_line(k, f, indent="  #   ") for k, f in keys.items()]
            seen.update(keys)
    return lines


def _other_method_keys(shown: type[BaseModel]) -> list[str]:
    lines, seen = [], set(shown.model_fields)
    for method in method_registry.METHODS.values():
        keys = {k: f for k, f in method.options.model_fields.items() if k not in seen}
        if keys:
            lines.append(f"  # with method.name: {method.name}")
            lines += [_key_line(k, f, indent="  #   ") for k, f in keys.items()]
            seen.update(keys)
    if lines:
        lines.insert(0, "  # Keys of the other methods (each method takes only its own; `tunesmith methods` lists them):")
    return lines
