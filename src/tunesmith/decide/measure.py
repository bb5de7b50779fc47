"""Serving cost per system: each answers test requests one at a time, timed.

One request at a time is how an interactive endpoint sees them, and it makes the per-request
latency and CPU time the system's own (a batch would share them). CPU-seconds are the process's,
across all threads, so a model that keeps every core busy costs what it occupies.
"""

from __future__ import annotations

import time

import numpy as np

from tunesmith.data.tokenize import prompt_ids
from tunesmith.generation import generate_tokens
from tunesmith.train.precision import weights_held


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def measure_requests(model, tokenizer, convs: list[list[dict]], *, max_new_tokens: int, precision: str,
                     system_prompt: str | None = None) -> dict:
    """Latency (p50/p95, seconds), CPU-seconds and tokens per request over `convs`, one at a time."""
    latency, cpu, prompt, completion = [], [], [], []
    # The weights held at `precision` once, as a server holds them, so no request pays their bf16 cast and
    # packing (train/precision.py; each generate_tokens call would otherwise: ~0.15 s for the default model on an
    # idle 2-core machine, several times that on a busy one).
    with weights_held(model, precision):
        generate_tokens(model, tokenizer, convs[:1], max_new_tokens=2, batch_size=1, precision=precision,
                        system_prompt=system_prompt)   # warm-up: first-call allocations are no request's cost
        for conv in convs:
            c0, t0 = time.process_time(), time.perf_counter()
            new = generate_tokens(model, tokenizer, [conv], max_new_tokens=max_new_tokens, batch_size=1,
                                  precision=precision, system_prompt=system_prompt)[0]
            latency.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            prompt.append(len(prompt_ids(tokenizer, conv, system_prompt)))
            completion.append(len(new))
    n = len(convs)
    return {"requests": n, "latency_p50_s": percentile(latency, 50), "latency_p95_s": percentile(latency, 95),
            "cpu_s_per_request": sum(cpu) / n, "cpu_s_per_1k_requests": 1000 * sum(cpu) / n,
            "prompt_tokens_per_request": sum(prompt) / n, "completion_tokens_per_request": sum(completion) / n}


def money_per_request(m: dict, token_prices: tuple[float, float] | None, price_per_cpu_hour: float) -> float | None:
    """Price of one request: its tokens at the token prices plus its CPU time at the CPU price."""
    if token_prices is None and not price_per_cpu_hour:
        return None
    cost = m["cpu_s_per_request"] * price_per_cpu_hour / 3600
    if token_prices is not None:
        cost += (m["prompt_tokens_per_request"] * token_prices[0] + m["completion_tokens_per_request"] * token_prices[1]) / 1000
    return cost
