"""The settings of `tunesmith decide`: one pydantic model; the CLI flags are generated from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tunesmith.config import Section, auto_or_int, auto_or_number


class DecideOptions(Section):
    test: str | None = Field(None, description="held-out test data; empty: test_fraction of --data is held out")
    docs: str | None = Field(None, description="folder of .txt, .md, .pdf documents: adds the rag system")
    model: str = Field("default", description="base model of every system and of the fine-tune (see model.base)")
    budget_minutes: float = Field(4.0, gt=0, description=(
        "training time of the quick fine-tune (all learning-curve runs together), from a measured step time"))
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of --data held out as test data when --test is not given")
    metrics: list[str] = Field(default_factory=lambda: ["exact_match"], min_length=1, description=(
        "quality metrics (the first decides); `tunesmith eval --help` lists them"))
    few_shot_k: int = Field(3, ge=1, description="demonstrations in few-shot and retrieval-few-shot prompts")
    rag_k: int = Field(3, ge=1, description="document passages in each rag prompt")
    max_new_tokens: Literal["auto"] | int = Field("auto", description="generation budget per answer ('auto': from the reference answers)")
    lora_r: int = Field(16, ge=1, description="LoRA rank of the quick fine-tune (alpha = 2 r, all linear layers)")
    lr: Literal["auto"] | float = Field("auto", description=(
        "peak learning rate of the quick fine-tune ('auto': LoRA's rate for this model, as train.lr: auto)"))
    batch_size: int = Field(8, gt=0, description="examples per optimizer step of the quick fine-tune")
    max_epochs: float = Field(2.0, gt=0, description="at most this many passes over the training data, however large the budget")
    learning_curve: bool = Field(True, description="also fine-tune on 25 % and 50 % of the training data (same epochs)")
    latency_requests: int = Field(16, ge=1, description="test requests each system answers one at a time for latency and CPU cost")
    regression: bool = Field(True, description="score base vs fine-tune on the shipped general set (forgetting)")
    price_per_1k_tokens: list[float] = Field(default_factory=list, description=(
        "inference price per 1,000 tokens: PROMPT or PROMPT,COMPLETION (money per 1,000 requests in the report)"))
    price_per_1k_training_tokens: float = Field(0.0, ge=0, description="price per 1,000 tokens trained on (one-time cost)")
    price_per_cpu_hour: float = Field(0.0, ge=0, description="price of one CPU-hour, for training and inference compute")
    seed: int = Field(0, description="seed of the test split, the few-shot draws and the fine-tune")
    teacher: str | None = Field(None, description=(
        "a stronger model also scored zero-shot and few-shot: openai:MODEL (an OpenAI-compatible endpoint, see "
        "teacher_url) or local:MODEL_OR_ADAPTER"))
    teacher_url: str | None = Field(None, description="base URL of the teacher's endpoint, e.g. http://127.0.0.1:8000/v1")
    teacher_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the teacher endpoint's API key")
    teacher_price_per_1k_tokens: list[float] = Field(default_factory=list, description=(
        "the teacher's price per 1,000 tokens: PROMPT or PROMPT,COMPLETION (its money per 1,000 requests)"))

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _max_new_tokens(cls, value: Any) -> Any:
        return auto_or_int(value, above=0)

    @field_validator("lr", mode="before")
    @classmethod
    def _lr(cls, value: Any) -> Any:
        return auto_or_number(value)

    @field_validator("price_per_1k_tokens", "teacher_price_per_1k_tokens")
    @classmethod
    def _prices(cls, value: list[float]) -> list[float]:
        if len(value) > 2 or any(v < 0 for v in value):
            raise ValueError("give PROMPT or PROMPT,COMPLETION: one or two prices, not negative")
        return value

    @property
    def token_prices(self) -> tuple[float, float] | None:
        """(prompt, completion) price per 1,000 tokens, or None when no price was given."""
        if not self.price_per_1k_tokens:
            return None
        prompt = self.price_per_1k_tokens[0]
        return prompt, self.price_per_1k_tokens[-1]

    @property
    def teacher_token_prices(self) -> tuple[float, float] | None:
        """The teacher's (prompt, completion) price per 1,000 tokens, or None when none was given."""
        if not self.teacher_price_per_1k_tokens:
            return None
        return self.teacher_price_per_1k_tokens[0], self.teacher_price_per_1k_tokens[-1]

    @property
    def priced(self) -> bool:
        return bool(self.price_per_1k_tokens or self.price_per_1k_training_tokens or self.price_per_cpu_hour)
