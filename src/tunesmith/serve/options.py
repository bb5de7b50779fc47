"""The server's settings: one pydantic model, the single source of every default and description.

`tunesmith serve` builds its command-line options from these fields (cli/options.py), so a new
setting is one field here; Python callers pass the same names to `ServeOptions(...)`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServeOptions(BaseModel):
    # A misspelt keyword from Python is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="base model: 'default', an HF folder, a .gguf, a cached hub id")
    served_name: str | None = Field(None, description="API id of the base model (default: the model as given)")
    adapters: dict[str, str] = Field(default_factory=dict,
                                     description="NAME=PATH of an adapter folder (repeatable); NAME is the API model id")
    adapter_dir: str | None = Field(None, description="POST /v1/adapters may load adapters from this folder (and below) only")
    api_key: str | None = Field(None, description="require 'Authorization: Bearer KEY' on every route but /health")
    dtype: str = Field("auto", description=(
        "auto: bf16 autocast over fp32 weights (the frozen linear weights held in bf16) where the CPU has native "
        "bf16 (AVX-512 bf16 / AMX), fp32 elsewhere: how `tunesmith eval` generates with precision: auto; "
        "fp32, bf16 or fp16: every weight in that dtype, no autocast"))
    max_batch: int = Field(16, description="rows decoded together in one forward pass")
    max_queue: int = Field(256, description="waiting requests before 429")
    prompt_lookup: int = Field(0, ge=0, description=(
        "speculative decoding by prompt lookup: draft up to N tokens per step from each prompt (batches of at most "
        "4 rows; greedy answers are unchanged, sampled ones keep their distribution); 0 = off"))
    draft_model: str | None = Field(None, description=(
        "speculative decoding with a smaller model sharing the tokenizer (like --model): it drafts --draft-tokens "
        "tokens per step in batches of at most 4 rows (greedy answers are unchanged, sampled ones keep their distribution)"))
    draft_tokens: int = Field(4, ge=1, description="--draft-model: tokens drafted per step")
    eft_large: str | None = Field(None, description=(
        "emulated fine-tuning: a larger base sharing the tokenizer (like --model); every answer's next-token log-probs "
        "become log p_large + beta * (log p_adapter - log p_base), beta from the request's eft_beta or --eft-beta"))
    eft_beta: float = Field(1.0, ge=0.0, description="--eft-large: beta of requests that set no eft_beta")
    prompt_cache_mb: int = Field(256, ge=0, description=(
        "keep the keys and values of recent prompts, per adapter, up to this many MB: a request that starts as an "
        "earlier one did (a shared system prompt, few-shot examples, a conversation's earlier turns) prefills only "
        "the rest; 0 = off (off with --draft-model and --eft-large)"))
    stop_loops: bool = Field(True, description=(
        "stop a reply whose tail repeats one block more often than the adapter's training answers allow (the "
        "limit `tunesmith train` records in the adapter's tunesmith.json; finish_reason 'stop'); a model with no "
        "recorded limit is checked against --loop-limit when set"))
    loop_limit: int | None = Field(None, ge=2, description=(
        "--stop-loops for the base model and adapters without a recorded limit: stop a reply whose tail repeats "
        "one block (24+ tokens in all, digits ignored) more than N times; unset: those are not checked"))
    max_tokens_limit: int = Field(1024, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, description="max_tokens when a chat request sets none")
    max_body_bytes: int = Field(1 << 20, description="largest request body (413 above)")
    request_timeout_s: float = Field(300.0, description="seconds before a request is abandoned (504)")
    max_n: int = Field(8, description="largest n (choices per request) a request may ask for")
    traffic_log: str | None = Field(None, description="append every chat answer to this JSONL file (messages format)")
    # The fine-tuning service (/v1/files, /v1/fine_tuning/jobs): off unless data_dir is set.
    data_dir: str | None = Field(None, description=(
        "folder of the fine-tuning service: its SQLite store, uploaded files and job runs; "
        "unset: /v1/files and /v1/fine_tuning are off"))
    tenants: dict[str, str] = Field(default_factory=dict, description=(
        "ORG=KEY (repeatable): an API key of its own per organization; each sees only its own files, jobs "
        "and fine-tuned models (--api-key's organization is 'local')"))
    job_workers: int = Field(1, description="fine-tuning jobs trained at once, each in its own process; 0 keeps jobs queued")
    max_upload_bytes: int = Field(256 << 20, description="largest file POST /v1/files accepts (413 above)")
    max_queued_jobs: int = Field(20, description="queued and running jobs one organization may have (429 above)")
    max_data_bytes: int = Field(50 << 30, description="disk the fine-tuning service may use under data_dir, all organizations together")
