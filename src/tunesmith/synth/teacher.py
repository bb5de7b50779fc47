"""Teachers: the stronger model that writes, answers and judges examples.

A teacher takes many conversations at once and returns one `Reply` each; a conversation given as a
plain string is a raw completion prompt (OpenAI's /v1/completions, or no chat template locally: how
Self-Instruct asked a base model to continue a list of tasks). Two kinds, in a registry
keyed by the spec's prefix: `openai:MODEL` (any OpenAI-compatible endpoint: vLLM, Ollama,
llama.cpp's server, a hosted API, `tunesmith serve` itself) and `local:MODEL_OR_ADAPTER` (our own
generation engine). Both share the request cache (cache.py) and the usage counters, so a rerun
never asks again what was already answered and every stage's tokens and cost are known.

The endpoint client sends requests from a thread pool (`concurrency` at a time), paced by a
requests-per-minute limit, and retries 429, 5xx, timeouts and dropped connections with exponential
backoff (honouring Retry-After). Other errors (400, 404 ...) are not retried: asking again would
get the same answer. A request that still fails comes back as a failed `Reply` and is counted;
failures are never cached, so a rerun asks them again.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from tunesmith.errors import UserError
from tunesmith.synth.cache import RequestCache, request_key


@dataclass
class Reply:
    text: str | None          # None: the request failed (see error)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error: str | None = None


@dataclass
class StageUsage:
    requests: int = 0          # sent to the teacher in this run
    cached: int = 0            # answered from the request cache
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0     # spent in this run (cached replies cost nothing)
    completion_tokens: int = 0
    cost: float = 0.0


@dataclass
class Pricing:
    prompt_per_1k: float = 0.0
    completion_per_1k: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_per_1k + completion_tokens * self.completion_per_1k) / 1000


@dataclass
class TeacherSettings:
    temperature: float = 0.7
    max_tokens: int = 512
    concurrency: int = 4
    requests_per_minute: float = 0.0   # 0: no limit
    max_retries: int = 5
    backoff_seconds: float = 1.0       # first retry waits this long, doubling each time
    timeout_seconds: float = 120.0
    pricing: Pricing = field(default_factory=Pricing)


class RateLimit:
    """At most `per_minute` request starts per minute, evenly spaced (0: no limit)."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            time.sleep(start - now)


class Teacher:
    """Cache and usage accounting around `_ask` (one conversation) or `_ask_many` (a batch)."""

    kind = ""

    def __init__(self, model: str, settings: TeacherSettings, cache: RequestCache):
        self.model, self.settings, self.cache = model, settings, cache
        self.usage: dict[str, StageUsage] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.model}"

    def check(self) -> None:
        """Raise a one-line UserError when the teacher cannot answer (called before any work)."""

    def key(self, messages: list[dict] | str, variant: int, temperature: float, max_tokens: int,
            stop: tuple[str, ...] = ()) -> str:
        payload = {"teacher": self.name, "messages": messages, "temperature": temperature,
                   "max_tokens": max_tokens, "variant": variant}
        if stop:   # only when given, so the keys of chat requests cached before stop existed still match
            payload["stop"] = list(stop)
        return request_key(payload)

    def stage(self, name: str) -> StageUsage:
        with self._lock:
            return self.usage.setdefault(name, StageUsage())

    def _count(self, stage: str, reply: Reply, retries: int = 0) -> None:
        with self._lock:
            u = self.usage.setdefault(stage, StageUsage())
            u.retries += retries
            if reply.cached:
                u.cached += 1
                return
            u.requests += 1
            if reply.text is None:
                u.failed += 1
            u.prompt_tokens += reply.prompt_tokens
            u.completion_tokens += reply.completion_tokens
            u.cost += self.settings.pricing.cost(reply.prompt_tokens, reply.completion_tokens)

    def chat_many(self, conversations: list[list[dict] | str], *, stage: str, variants: list[int] | None = None,
                  temperature: float | None = None, max_tokens: int | None = None, stop: tuple[str, ...] = (),
                  progress: Callable[[int], None] | None = None) -> list[Reply]:
        """One reply per conversation (or raw completion prompt), in order; cached ones are read back,
        the rest are asked. `temperature` and `max_tokens` override the settings' (a judge needs 0 and
        a few tokens); a reply ends before the first of the `stop` strings."""
        temperature = self.settings.temperature if temperature is None else temperature
        max_tokens = max_tokens or self.settings.max_tokens
        variants = variants or [0] * len(conversations)
        keys = [self.key(m, v, temperature, max_tokens, stop) for m, v in zip(conversations, variants)]
        replies: list[Reply | None] = []
        todo: list[int] = []
        copies: dict[str, list[int]] = {}   # the same request twice in one call is asked once
        for i, key in enumerate(keys):
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("text"), str):
                reply = Reply(hit["text"], hit.get("prompt_tokens", 0), hit.get("completion_tokens", 0), cached=True)
                self._count(stage, reply)
                replies.append(reply)
                continue
            replies.append(None)
            if key in copies:
                copies[key].append(i)
            else:
                copies[key] = []
                todo.append(i)
        if progress is not None and len(todo) < len(keys):
            progress(len(keys) - len(todo))

        def done(i: int, reply: Reply, retries: int = 0) -> None:
            if reply.text is not None:
                self.cache.put(keys[i], {"text": reply.text, "prompt_tokens": reply.prompt_tokens,
                                         "completion_tokens": reply.completion_tokens})
            self._count(stage, reply, retries)
            replies[i] = reply
            for j in copies[keys[i]]:
                replies[j] = Reply(reply.text, reply.prompt_tokens, reply.completion_tokens, cached=reply.text is not None,
                                   error=reply.error)
                if reply.text is not None:   # counted as a cache hit: it cost nothing more
                    self._count(stage, replies[j])
            if progress is not None:
                progress(1)

        if todo:
            self._ask_many([(conversations[i], variants[i]) for i in todo], temperature, max_tokens, stop,
                           lambda j, reply, retries=0: done(todo[j], reply, retries))
        return replies  # type: ignore[return-value]

    def _ask_many(self, requests: list[tuple[list[dict] | str, int]], temperature: float, max_tokens: int,
                  stop: tuple[str, ...], done: Callable[..., None]) -> None:
        raise NotImplementedError


class EndpointTeacher(Teacher):
    """Any OpenAI-compatible chat endpoint, through the official `openai` client."""

    kind = "openai"

    def __init__(self, model: str, settings: TeacherSettings, cache: RequestCache, base_url: str | None = None,
                 api_key: str | None = None, role: str = "teacher", url_flag: str = "--teacher-url"):
        super().__init__(model, settings, cache)
        from openai import OpenAI

        # What it is in this run (teacher, judge, answerer) and the option that sets its URL: errors name both.
        self.role, self.url_flag = role, url_flag

        self.base_url = base_url or "https://api.openai.com/v1"
        # Retries are ours (counted, with our backoff and rate limit), so the client's own are off.
        self.client = OpenAI(base_url=self.base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "unused",
                             max_retries=0, timeout=settings.timeout_seconds)
        self.limit = RateLimit(settings.requests_per_minute)

    def check(self) -> None:
        import openai

        try:
            self.client.with_options(timeout=15).models.list()
        except openai.AuthenticationError:
            raise UserError(f"{self.role} {self.base_url} rejected the API key",
                            hint="set OPENAI_API_KEY (or --teacher-key-env names the variable holding it)") from None
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise UserError(f"{self.role} {self.base_url} is unreachable ({type(exc).__name__}: {exc})",
                            hint=f"start the server (e.g. tunesmith serve) or fix {self.url_flag}") from None
        except openai.APIStatusError as exc:
            if exc.status_code != 404:  # a server without /models can still chat
                raise UserError(f"{self.role} {self.base_url} answered {exc.status_code} to GET /models: {exc.message}",
                                hint=f"check {self.url_flag} (it ends in /v1 for most servers)") from None

    @staticmethod
    def _retry_after(exc) -> float | None:
        response = getattr(exc, "response", None)
        value = response.headers.get("retry-after") if response is not None else None
        try:
            return min(float(value), 60.0) if value is not None else None
        except ValueError:
            return None

    def _ask(self, messages: list[dict] | str, variant: int, temperature: float, max_tokens: int,
             stop: tuple[str, ...] = ()) -> tuple[Reply, int]:
        import openai

        s = self.settings
        retries = 0
        extra = {"stop": list(stop)} if stop else {}
        while True:
            self.limit.wait()
            try:
                if isinstance(messages, str):
                    response = self.client.completions.create(
                        model=self.model, prompt=messages, temperature=temperature, max_tokens=max_tokens,
                        seed=variant, **extra)
                    text = response.choices[0].text or ""
                else:
                    response = self.client.chat.completions.create(
                        model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens,
                        seed=variant, **extra)
                    text = response.choices[0].message.content or ""
                usage = response.usage
                return Reply(text, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0), retries
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError,
                    openai.APITimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                wait = self._retry_after(exc)
            except openai.APIStatusError as exc:
                if exc.status_code < 500 and exc.status_code not in (408, 409):
                    return Reply(None, error=f"HTTP {exc.status_code}: {exc.message}"), retries
                error, wait = f"HTTP {exc.status_code}: {exc.message}", self._retry_after(exc)
            if retries >= s.max_retries:
                return Reply(None, error=f"{error} (after {retries} retries)"), retries
            # Jitter keeps concurrent workers from retrying in lock step.
            time.sleep(wait if wait is not None else s.backoff_seconds * 2 ** retries * (0.5 + random.random()))
            retries += 1

    def _ask_many(self, requests, temperature, max_tokens, stop, done) -> None:
        def one(j: int) -> None:
            reply, retries = self._ask(*requests[j], temperature, max_tokens, stop)
            done(j, reply, retries)

        pool = ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency))
        try:
            for future in [pool.submit(one, j) for j in range(len(requests))]:
                future.result()
        except BaseException:
            # Ctrl-C or an error: ask nothing new, but let the requests in flight land in the cache.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()


class LocalTeacher(Teacher):
    """A local model, or an adapter on its base, through our generation engine (batched, greedy at 0)."""

    kind = "local"

    def __init__(self, model: str, settings: TeacherSettings, cache: RequestCache):
        super().__init__(model, settings, cache)
        self._loaded = None

    def check(self) -> None:
        self._load()

    def _load(self):
        if self._loaded is None:
            from pathlib import Path

            if (Path(self.model) / "adapter_config.json").is_file():
                from tunesmith.export.merge import load_adapter_model

                model, tokenizer, _ = load_adapter_model(self.model)
            else:
                from tunesmith.models import load_model, load_tokenizer, resolve_base

                resolved = resolve_base(self.model)
                model, tokenizer = load_model(resolved), load_tokenizer(resolved)
            self._loaded = (model, tokenizer)
        return self._loaded

    def _ask_many(self, requests, temperature, max_tokens, stop, done) -> None:
        from tunesmith.generation import generate_tokens
        from tunesmith.generation.detok import stop_index
        from tunesmith.generation.offline import encode_prompt

        model, tokenizer = self._load()
        conversations = [m for m, _ in requests]
        seed = requests[0][1] if requests else 0
        tokens = generate_tokens(model, tokenizer, conversations, max_new_tokens=max_tokens,
                                 temperature=temperature, seed=seed, stop=stop)
        for j, (conv, new) in enumerate(zip(conversations, tokens)):
            text = tokenizer.decode(new, skip_special_tokens=True)
            cut = stop_index(text, stop)
            done(j, Reply((text[:cut] if cut >= 0 else text).strip(), len(encode_prompt(tokenizer, conv)), len(new)))


def _endpoint(model: str, settings: TeacherSettings, cache: RequestCache, base_url: str | None = None,
              api_key: str | None = None, **where) -> Teacher:
    return EndpointTeacher(model, settings, cache, base_url=base_url, api_key=api_key, **where)


def _local(model: str, settings: TeacherSettings, cache: RequestCache, **_) -> Teacher:
    return LocalTeacher(model, settings, cache)


TEACHERS: dict[str, Callable[..., Teacher]] = {"openai": _endpoint, "local": _local}


def make_teacher(spec: str, settings: TeacherSettings, cache: RequestCache, *, base_url: str | None = None,
                 api_key: str | None = None, flag: str = "--teacher", role: str = "teacher",
                 url_flag: str = "--teacher-url") -> Teacher:
    """`openai:MODEL` (with base_url for a local server) or `local:MODEL_OR_ADAPTER_FOLDER`. `flag` named
    the spec; `role` and `url_flag` are what an endpoint's errors call it and the option that fixes its URL."""
    kind, _, model = spec.partition(":")
    if kind not in TEACHERS or not model:
        raise UserError(f"{flag} '{spec}' is not KIND:MODEL",
                        hint=f"KIND is one of {', '.join(TEACHERS)}, e.g. openai:gpt-4o-mini or local:runs/quickstart/adapter")
    return TEACHERS[kind](model, settings, cache, base_url=base_url, api_key=api_key, role=role, url_flag=url_flag)


def usage_dict(usage: StageUsage) -> dict:
    out = asdict(usage)
    out["cost"] = round(out["cost"], 6)
    return out
