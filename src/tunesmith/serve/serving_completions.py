"""POST /v1/completions: a raw prompt (text, texts, or token ids) -> the engine -> OpenAI JSON or SSE."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from tunesmith.serve.errors import bad_request
from tunesmith.serve.protocol import CompletionRequest
from tunesmith.serve.serving import Disconnected, Job, ServingBase


class ServingCompletions(ServingBase):
    def prompts(self, body: CompletionRequest) -> list[list[int]]:
        """Token ids of each prompt; a 400 for an empty prompt or an id outside the vocabulary."""
        tokenizer = self.state.tokenizer
        vocab = len(tokenizer)
        if isinstance(body.prompt, str):
            prompts = [tokenizer(body.prompt)["input_ids"]]
        elif body.prompt and all(isinstance(p, int) for p in body.prompt):
            if any(not 0 <= t < vocab for t in body.prompt):
                raise bad_request(f"prompt token ids must be in [0, {vocab})", "prompt")
            prompts = [list(body.prompt)]
        elif body.prompt:
            prompts = [tokenizer(p)["input_ids"] for p in body.prompt]
        else:
            raise bad_request("prompt must not be empty", "prompt")
        if any(not p for p in prompts):
            raise bad_request("prompt must not be empty", "prompt")
        return prompts

    async def create(self, body: CompletionRequest, is_disconnected: Disconnected,
                     org: str | None = None) -> dict | AsyncIterator[str]:
        """The text_completion answer (choices: prompts x n), or (body.stream) an async iterator of SSE lines."""
        adapter = self.resolve_model(body.model, org)
        prompts = self.prompts(body)
        max_tokens = self.max_tokens(body, [len(p) for p in prompts], body.max_tokens)
        job = Job(self.state, adapter, prompts, body, max_tokens)
        n_choices = len(prompts) * body.n
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        if body.stream:
            def chunk(index, text, reason, opening=False, usage=None):
                if opening:
                    return None
                base = {"id": rid, "object": "text_completion", "created": created, "model": body.model}
                if usage is not None:
                    return base | {"choices": [], "usage": usage}
                return base | {"choices": [{"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}]}
            include = bool(body.stream_options and body.stream_options.include_usage)
            return self.stream(job, is_disconnected, n_choices, chunk, include)

        texts, reasons, tokens = await self.collect(job, is_disconnected, n_choices)
        return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                "choices": [{"index": i, "text": t, "finish_reason": reasons[i], "logprobs": None}
                            for i, t in enumerate(texts)],
                "usage": job.usage(sum(tokens))}
