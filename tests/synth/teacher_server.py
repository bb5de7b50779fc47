"""A scripted teacher: a real HTTP server (FastAPI on uvicorn, 127.0.0.1) answering the OpenAI chat
shape, for the synth tests. It is the counterpart the client is tested against, not a stand-in for
the client: requests go through the `openai` package, the network, retries and the cache as in a
real run.

It writes order-extraction examples (the quickstart's task) for from-seeds and evolve, QA pairs for
from-docs, marked answers for relabel, new order requests alone (chat, or a raw completion of a
numbered list on /v1/completions) and their correct JSON when asked an order (an answerer), and judges with a rubric score that is high exactly when the
answer's quantity matches the number in the request. It injects failures: the first attempt of
some requests answers 429 (Retry-After: 0) or 500,
and a request containing ALWAYS-500 always answers 500. Every answered request is counted by its
content, so a test can assert that nothing was asked twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

INSTRUCTION = ('Extract the order as JSON with keys item (singular), quantity (integer), color, city and priority '
               '("high" or "normal").')
WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
CITIES = ["Lyon", "Oslo", "Quito", "Hanoi", "Perth", "Cairo", "Lima", "Riga", "Turin", "Dakar", "Sapporo", "Austin",
          "Bergen", "Cusco", "Fez", "Graz", "Hobart", "Izmir", "Jaipur", "Kobe", "Leeds", "Malmo", "Nantes"]
ITEMS = ["lamp", "chair", "desk", "kettle", "mug", "shelf", "stool", "clock", "vase", "rug", "fan", "mirror", "bench"]
COLORS = ["red", "blue", "green", "black", "white", "grey", "yellow", "orange"]
MOODS = ["asks for", "wants", "needs", "would like", "is requesting", "has ordered"]


def order(n: int) -> tuple[str, str]:
    """The n-th synthetic order: a prompt and its correct JSON answer (distinct for every n below ~2000)."""
    q = 2 + n % 8
    city, item, color = CITIES[n % len(CITIES)], ITEMS[(n // 3) % len(ITEMS)], COLORS[(n // 7) % len(COLORS)]
    urgent = n % 3 == 0
    text = f"{INSTRUCTION}\nOrder: The {city} team {MOODS[n % len(MOODS)]} {WORDS[q]} {color} {item}s" \
           + (" - urgent." if urgent else ".")
    answer = json.dumps({"item": item, "quantity": q, "color": color, "city": city,
                         "priority": "high" if urgent else "normal"})
    return text, answer


def wrong(n: int) -> tuple[str, str]:
    """The n-th order with a planted wrong answer (the quantity is off by one)."""
    text, answer = order(n)
    value = json.loads(answer)
    value["quantity"] += 1
    return text, json.dumps(value)


ORDER = re.compile(r"The (\w+) team (?:asks for|wants|needs|would like|is requesting|has ordered) (\w+) (\w+) (\w+)s( - urgent)?")


def answer_order(text: str) -> str | None:
    """The correct JSON of an order written as `order` writes them (None: not such an order)."""
    m = ORDER.search(text)
    if m is None:
        return None
    city, word, color, item, urgent = m.groups()
    quantity = {v: k for k, v in WORDS.items()}.get(word)
    return json.dumps({"item": item, "quantity": quantity, "color": color, "city": city,
                       "priority": "high" if urgent else "normal"})


def judge_score(request: str, answer: str) -> int:
    word = re.search(r"\b(" + "|".join(WORDS.values()) + r")\b", request)
    try:
        quantity = json.loads(answer).get("quantity")
    except (json.JSONDecodeError, AttributeError):
        return 1
    if word is None:
        return 8
    return 9 if {v: k for k, v in WORDS.items()}[word.group(1)] == quantity else 2


class ScriptedTeacher:
    def __init__(self, delay: float = 0.0, fail: bool = True, invalid_every: int = 7, duplicate_every: int = 11,
                 wrong_every: int = 0):
        self.delay, self.fail = delay, fail
        self.invalid_every, self.duplicate_every, self.wrong_every = invalid_every, duplicate_every, wrong_every
        self.served: Counter = Counter()      # content key -> answered count
        self.attempts = 0
        self.failures: Counter = Counter()    # status -> count
        self.prompts: list[str] = []          # every answered request's text
        self.lock = threading.Lock()

    # What each kind of prompt gets.
    def reply(self, text: str) -> str:
        if text.startswith("You grade one training example"):
            request = text.split("Request:\n", 1)[1].split("\n\nAnswer:\n", 1)[0]
            answer = text.split("\n\nAnswer:\n", 1)[1].split("\n\nScore the answer", 1)[0]
            return f"The answer was checked.\nScore: {judge_score(request, answer)}"
        m = re.search(r"new example number (\d+)", text)
        if m:
            n = int(m.group(1))
            if self.invalid_every and n % self.invalid_every == 0:
                return "Sorry, I cannot help with that."
            if self.duplicate_every and n % self.duplicate_every == 0:
                n -= 1
            prompt, answer = wrong(n) if self.wrong_every and n % self.wrong_every == 0 else order(n)
            return "Here you go:\n```json\n" + json.dumps({"prompt": prompt, "response": answer}) + "\n```"
        m = re.search(r"new request number (\d+)", text)
        if m:
            return order(int(m.group(1)))[0].split("Order: ", 1)[1]
        if text.startswith(INSTRUCTION) and answer_order(text) is not None:
            return answer_order(text)
        if text.startswith("You rewrite tasks"):
            n = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 1000 + 500
            prompt, answer = order(n)
            return json.dumps({"prompt": prompt + " Deliver before Friday.", "response": answer})
        if text.startswith("You write question-answer pairs"):
            passage = text.split("Passage (from ", 1)[1].split("):\n", 1)[1].split("\n\nWrite ", 1)[0]
            words = passage.split()
            return json.dumps([{"prompt": f"What does the text say about {words[0]} {words[1]}?",
                                "response": " ".join(words[:12])},
                               {"prompt": f"How does the passage on {words[2]} end?", "response": " ".join(words[-8:])}])
        return "TEACHER ANSWER: " + text.upper()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "tests"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            text = "\n".join(m["content"] for m in body["messages"])
            key = hashlib.sha256(json.dumps([body["messages"], body.get("seed")]).encode()).hexdigest()
            with self.lock:
                self.attempts += 1
                first = key not in self.failures
                self.failures.setdefault(key, 0)
            if "ALWAYS-500" in text:
                with self.lock:
                    self.failures["500"] += 1
                return JSONResponse({"error": {"message": "broken", "type": "server_error"}}, status_code=500)
            bucket = int(key[:2], 16) % 4
            if self.fail and first and bucket in (0, 1):
                with self.lock:
                    self.failures[key] += 1
                    self.failures["429" if bucket == 0 else "500"] += 1
                if bucket == 0:
                    return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, status_code=429,
                                        headers={"retry-after": "0"})
                return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=500)
            if self.delay:
                await asyncio.sleep(self.delay)
            try:
                content = self.reply(text)
            except Exception as exc:       # a broken model: the 500 with an error body a real server sends
                # (an exception left to uvicorn may close a pooled connection: a connection error, not a 500)
                return JSONResponse({"error": {"message": str(exc), "type": "server_error"}}, status_code=500)
            with self.lock:
                self.served[key] += 1
                self.prompts.append(text)
            return {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(text.split()), "completion_tokens": len(content.split()),
                              "total_tokens": len(text.split()) + len(content.split())}}

        @app.post("/v1/completions")
        async def completions(request: Request):
            """A raw completion of a numbered list: the next item, a new order, picked by the prompt and seed."""
            body = await request.json()
            key = hashlib.sha256(json.dumps([body["prompt"], body.get("seed")]).encode()).hexdigest()
            n = int(key, 16) % 1500
            stop = body.get("stop") or []
            # A model would go on with the next item; the stop string cuts it as a server does.
            text = " " + order(n)[0].split("Order: ", 1)[1] + (stop[0] if stop else "\n") + " more"
            text = text.split(stop[0])[0] if stop else text
            with self.lock:
                self.attempts += 1
                self.served[key] += 1
                self.prompts.append(body["prompt"])
            return {"id": "cmpl-x", "object": "text_completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": len(text.split()),
                              "total_tokens": len(body["prompt"].split()) + len(text.split())}}

        return app


class RunningTeacher:
    """`with RunningTeacher(ScriptedTeacher()) as url:` - uvicorn on a free port in a thread."""

    def __init__(self, teacher: ScriptedTeacher):
        import uvicorn

        from tunesmith.serve.server import free_port

        self.teacher = teacher
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(teacher.app(), host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("scripted teacher did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
