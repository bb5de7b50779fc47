"""POST /v1/chat/completions: messages -> the model's chat template -> the engine -> OpenAI JSON or SSE."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from tunesmith.serve.errors import bad_request
from tunesmith.serve.protocol import ChatCompletionRequest
from tunesmith.serve.serving import Disconnected, Job, ServingBase
from tunesmith.serve.traffic import utc_now

# OpenAI's newer role names that chat templates do not know.
ROLE_MAP = {"developer": "system"}


class ServingChat(ServingBase):
    def messages(self, body: ChatCompletionRequest) -> list[dict]:
        """The request's messages as the chat template takes them (roles mapped, text parts joined)."""
        return [{"role": ROLE_MAP.get(m.role, m.role), "content": m.text()} for m in body.messages]

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        from tunesmith.data.tokenize import prompt_ids

        try:
            return prompt_ids(self.state.tokenizer, messages)
        except Exception as exc:  # jinja errors from the model's own template are the request's fault
            raise bad_request(f"the chat template rejected these messages: {exc}", "messages") from None

    async def create(self, body: ChatCompletionRequest, is_disconnected: Disconnected,
                     org: str | None = None) -> dict | AsyncIterator[str]:
        """The chat.completion answer, or (body.stream) an async iterator of SSE lines."""
        state = self.state
        adapter = self.resolve_model(body.model, org)
        messages = self.messages(body)
        ids = self.prompt_ids(messages)
        max_tokens = self.max_tokens(body, [len(ids)], body.max_completion_tokens or body.max_tokens)
        started = utc_now()
        job = Job(state, adapter, [ids], body, max_tokens)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def log_traffic(texts, reasons, tokens):
            # The log is training data: a choice cut short (hang-up, timeout, error) has no finish_reason
            # and would teach truncated answers, so only completed choices of a completed call are written.
            if state.traffic is None or job.disconnected:
                return
            for i, text in enumerate(texts):
                if reasons[i] is None:
                    continue
                state.traffic.write(messages=messages, answer=text, model=body.model, adapter=adapter, started=started,
                                    finish_reason=reasons[i], usage=job.usage(tokens[i]) | {"choice": i},
                                    request_id=rid, metadata=body.metadata)

        if body.stream:
            def chunk(index, text, reason, opening=False, usage=None):
                base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model}
                if usage is not None:
                    return base | {"choices": [], "usage": usage}
                delta = {"role": "assistant", "content": ""} if opening else ({"content": text} if text else {})
                return base | {"choices": [{"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}]}
            include = bool(body.stream_options and body.stream_options.include_usage)
            return self.stream(job, is_disconnected, body.n, chunk, include, on_done=log_traffic)

        texts, reasons, tokens = await self.collect(job, is_disconnected, body.n)
        log_traffic(texts, reasons, tokens)
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": reasons[i],
                             "logprobs": None} for i, t in enumerate(texts)],
                "usage": job.usage(sum(tokens))}
