"""The settings of `tunesmith synth`: one pydantic model; the CLI flags are generated from it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunesmith.config import Section


class SynthOptions(Section):
    teacher: str = Field(..., description="the teacher: openai:MODEL (any OpenAI-compatible endpoint, see --teacher-url) "
                                          "or local:MODEL_OR_ADAPTER (our own generation)")
    teacher_url: str | None = Field(None, description="base URL of the teacher's endpoint, e.g. http://127.0.0.1:8000/v1 "
                                                      "(empty: api.openai.com)")
    teacher_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's API key")
    answerer: str | None = Field(None, description="from-seeds: a second model, as --teacher, that answers the new prompts "
                                                   "(Self-Instruct's two steps): the teacher then writes only prompts. Empty: "
                                                   "the teacher writes prompt and answer in one reply")
    answerer_url: str | None = Field(None, description="base URL of the answerer's endpoint (empty: --teacher-url)")
    answer_temperature: float = Field(0.0, ge=0, le=2, description="the answerer's sampling temperature (0: its most "
                                                                   "likely answer)")
    answer_max_tokens: int = Field(512, ge=1, description="the most tokens of one answer (--max-tokens is the writer's)")
    write_as: Literal["chat", "completion"] | None = Field(
        None, description="with --answerer, how the teacher is asked for a new prompt: chat (an instruction to "
                          "write one; instruct models) or completion (a numbered list of seed prompts to continue, "
                          "as Self-Instruct asked GPT-3; base and small models: /v1/completions, or no chat "
                          "template for local:). Empty: chat")
    n: int | None = Field(None, ge=1, description="examples to keep: from-seeds and evolve ask until this many pass "
                                                  "curation (empty: 100); the other modes stop here (empty: every input)")
    max_requests: int | None = Field(None, ge=1, description="at most this many synthesis requests (empty: 4 x the from-seeds / "
                                                             "evolve target, no limit for the other modes)")
    test: str | None = Field(None, description="held-out test data: never shown to the teacher, and candidates sharing "
                                               "an n-gram with it are dropped (decontamination)")
    decontam_ngram: int = Field(13, ge=1, description="word n-gram size of the decontamination check (13, as GPT-3's)")
    novelty: float = Field(0.7, gt=0, le=1, description="drop a new prompt whose ROUGE-L with an input or an accepted "
                                                        "prompt reaches this (from-seeds, evolve)")
    near_dup: float = Field(0.8, gt=0, le=1, description="near-duplicate MinHash Jaccard threshold (1: exact duplicates only)")
    min_score: float = Field(7.0, ge=0, le=10, description="LLM-judge rubric score (1-10) a candidate needs (0: no judge)")
    judge: str | None = Field(None, description="the judge, as --teacher (empty: the teacher judges)")
    judge_url: str | None = Field(None, description="base URL of the judge's endpoint (empty: --teacher-url)")
    judge_prompt: str | None = Field(None, description="your own rubric with {question} and {answer} (default: the shipped 1-10 rubric)")
    check: str | None = Field(None, description="a JSON Schema (.json) every answer must satisfy, or a Python file "
                                                "defining check(example) -> bool | str")
    prompt: str | None = Field(None, description="your own synthesis prompt template (default: the mode's shipped one)")
    examples_per_prompt: int = Field(3, ge=1, description="seed examples shown in each from-seeds request")
    per_chunk: int = Field(3, ge=1, description="question/answer pairs asked per passage (from-docs)")
    chunk_words: int = Field(250, ge=20, description="words per document passage (from-docs)")
    temperature: float = Field(0.7, ge=0, le=2, description="teacher sampling temperature (the judge uses 0)")
    max_tokens: int = Field(512, ge=1, description="the most tokens of one teacher reply")
    concurrency: int = Field(4, ge=1, description="teacher requests in flight at once")
    requests_per_minute: float = Field(0.0, ge=0, description="rate limit on teacher requests (0: none)")
    max_retries: int = Field(5, ge=0, description="retries of a request answered 429 or 5xx, or cut off, with exponential backoff")
    backoff_seconds: float = Field(1.0, ge=0, description="wait before the first retry; doubles each time (Retry-After wins)")
    price_prompt_per_1k: float = Field(0.0, ge=0, description="teacher price per 1,000 prompt tokens (cost in the report)")
    price_completion_per_1k: float = Field(0.0, ge=0, description="teacher price per 1,000 completion tokens")
    cache: str | None = Field(None, description="request cache folder; a rerun reads answers from it instead of asking "
                                                "again (empty: OUTPUT.cache next to the output)")
    seed: int = Field(0, description="seed of the example draws and evolutions (the same seed asks the same requests)")
