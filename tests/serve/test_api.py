"""The server end to end: a real uvicorn on 127.0.0.1, the official `openai` client, a tiny random
Llama with LoRA adapters (one trained by `tunesmith train`, three constructed with random A and B)
and one DoRA adapter that goes through the peft fallback path."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch

KEY = "sk-test-key"
PROMPTS = ["Hello there", "Give me the code for item 7, please, and explain it in detail."]


def _random_lora(base_dir: Path, out: Path, seed: int, **lora) -> Path:
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(seed)
    # init_lora_weights=False: random A *and* B, so each adapter visibly changes the model.
    config = LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **lora)
    get_peft_model(load_model(str(base_dir)), config).save_pretrained(out)
    (out / "tunesmith.json").write_text(json.dumps({"base": str(base_dir), "method": "lora"}))
    return out


def _random_ia3(base_dir: Path, out: Path, seed: int) -> Path:
    from peft import IA3Config, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(seed)
    model = get_peft_model(load_model(str(base_dir)), IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj", "down_proj"],
                                                                feedforward_modules=["down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ia3_l" in name:
                p.uniform_(0.0, 2.0)         # IA3 starts as the identity; make it change something
    model.save_pretrained(out)
    (out / "tunesmith.json").write_text(json.dumps({"base": str(base_dir), "method": "ia3"}))
    return out


def _prompt_tuning(base_dir: Path, out: Path, seed: int) -> Path:
    from peft import PromptTuningConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(seed)
    get_peft_model(load_model(str(base_dir)), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).save_pretrained(out)
    return out


def _trained_lora(base_dir: Path, data: Path, run_dir: Path) -> Path:
    from tunesmith.config import load_config
    from tunesmith.events import Events
    from tunesmith.pipeline import run

    cfg = load_config(None, [f"model.base={base_dir}", f"data.train={data}", "data.val_split=0", "data.max_len=64",
                             "method.name=lora", "method.r=8", "method.alpha=16", "method.dropout=0",
                             "train.max_steps=20", "train.batch_size=4", "train.lr=1e-2", "train.warmup_ratio=0",
                             "train.precision=fp32", "eval.enabled=false", f"output.dir={run_dir}"])
    run(cfg, events=Events())
    return run_dir / "adapter"


@pytest.fixture(scope="module")
def env(tiny_model_dir, tmp_path_factory):
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, build_state

    work = tmp_path_factory.mktemp("serve")
    root = work / "adapters"
    root.mkdir()
    memo = work / "memo.jsonl"
    memo.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Code for item {i}?"},
                                                     {"role": "assistant", "content": f"ITEM-{i:03d}"}]}) + "\n"
                            for i in range(16)))
    paths = {
        "trained": _trained_lora(tiny_model_dir, memo, root / "trained-run"),
        "a1": _random_lora(tiny_model_dir, root / "a1", 1, r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        "a2": _random_lora(tiny_model_dir, root / "a2", 2, r=2, lora_alpha=4, target_modules=["gate_proj", "up_proj", "down_proj"]),
        "a3": _random_lora(tiny_model_dir, root / "a3", 3, r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"]),
        "dora": _random_lora(tiny_model_dir, root / "dora", 4, r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj"]),
        "ia3": _random_ia3(tiny_model_dir, root / "ia3", 7),
        "ptune": _prompt_tuning(tiny_model_dir, root / "ptune", 8),    # virtual tokens: peft's own generate
    }
    late = _random_lora(tiny_model_dir, root / "nested" / "late", 5, r=16, lora_alpha=16, target_modules=["v_proj", "up_proj"])
    outside = _random_lora(tiny_model_dir, work / "outside", 6, r=4, lora_alpha=8, target_modules=["q_proj"])
    os.symlink(outside, root / "escape")                         # folder link out of the allowed root
    sneaky = root / "sneaky"
    sneaky.mkdir()
    (sneaky / "adapter_config.json").write_text((outside / "adapter_config.json").read_text())
    os.symlink(outside / "adapter_model.safetensors", sneaky / "adapter_model.safetensors")  # file link out

    options = ServeOptions(model=str(tiny_model_dir), served_name="base", adapters={k: str(v) for k, v in paths.items()},
                           adapter_dir=str(root), api_key=KEY, max_batch=8, max_tokens_limit=900, default_max_tokens=12,
                           max_body_bytes=64 * 1024, traffic_log=str(work / "traffic.jsonl"),
                           dtype="fp32")   # answers are checked token for token against fp32 `generate`
    state = build_state(options)
    with BackgroundServer(state) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
        yield {"url": url, "client": client, "state": state, "paths": paths, "late": late, "outside": outside,
               "work": work, "base": tiny_model_dir}
    state.close()


def offline_answers(base_dir: Path, tokenizer, apply):
    """answer(key, prompt, max_tokens): greedy `generate` on a fresh base with `apply(base, key)` on top,
    cached per (key, prompt, max_tokens): the offline side of every served-equals-offline check."""
    from tunesmith.generation import generate
    from tunesmith.models import load_model

    cache: dict = {}

    def answer(key, prompt: str, max_tokens: int = 12) -> str:
        if (key, prompt, max_tokens) not in cache:
            net = apply(load_model(str(base_dir)), key)
            cache[key, prompt, max_tokens] = generate(net, tokenizer, [[{"role": "user", "content": prompt}]],
                                                      max_new_tokens=max_tokens)[0]
        return cache[key, prompt, max_tokens]

    return answer


@pytest.fixture(scope="module")
def offline(env, tokenizer):
    """Greedy answers from plain transformers / peft `generate`, per served model name."""
    from peft import PeftModel

    def apply(base, model: str):
        path = env["paths"].get(model) or (env["late"] if model == "late" else None)
        return base if path is None else PeftModel.from_pretrained(base, str(path))

    return offline_answers(env["base"], tokenizer, apply)


def chat(client, model: str, prompt: str, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 12)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kw)


def test_models_lists_base_and_every_adapter(env):
    data = env["client"].models.list().data
    ids = [m.id for m in data]
    assert ids == ["base", "trained", "a1", "a2", "a3", "dora", "ia3", "ptune"]
    by_id = {m.id: m.model_dump() for m in data}
    assert by_id["a1"]["parent"] == "base" and by_id["a1"]["engine"] == "lora"
    assert by_id["dora"]["engine"] == "peft"           # DoRA and IA3 go through the fallback path
    assert by_id["ia3"]["engine"] == "peft" and by_id["ia3"]["method"] == "ia3"


@pytest.mark.parametrize("model", ["base", "trained", "a1", "a2", "a3", "dora", "ia3", "ptune"])
def test_greedy_answer_equals_offline_generation(env, offline, model):
    for prompt in PROMPTS:
        got = chat(env["client"], model, prompt)
        assert got.choices[0].message.content.strip() == offline(model, prompt)
        assert got.usage.completion_tokens <= 12 and got.usage.prompt_tokens > 5
        assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens


def test_adapters_change_the_answer(env):
    answers = {m: chat(env["client"], m, PROMPTS[0]).choices[0].message.content for m in ["base", "a1", "a2", "a3", "ia3"]}
    assert len(set(answers.values())) == 5, answers


def test_stream_joins_to_the_same_answer(env):
    client = env["client"]
    whole = chat(client, "a1", PROMPTS[1], max_tokens=20)
    chunks = list(chat(client, "a1", PROMPTS[1], max_tokens=20, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2   # really incremental
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_a_conversations_next_turn_reuses_the_keys_of_its_earlier_turns(env, tokenizer):
    from peft import PeftModel

    from tunesmith.generation import generate
    from tunesmith.models import load_model

    client = env["client"]
    first = [{"role": "user", "content": PROMPTS[1]}]
    reply = client.chat.completions.create(model="a1", messages=first, temperature=0, max_tokens=12)
    turn = [*first, {"role": "assistant", "content": reply.choices[0].message.content},
            {"role": "user", "content": "Now say it again in other words."}]
    before = httpx.get(f"{env['url']}/health").json()["engine"]
    again = client.chat.completions.create(model="a1", messages=turn, temperature=0, max_tokens=12)
    after = httpx.get(f"{env['url']}/health").json()["engine"]
    # The whole first request's prompt is stored; the next turn prefills only what follows it.
    assert after["prompt_cache_hits"] == before.get("prompt_cache_hits", 0) + 1
    reused = after["reused_prompt_tokens"] - before.get("reused_prompt_tokens", 0)
    assert reply.usage.prompt_tokens <= reused < again.usage.prompt_tokens
    assert after["prefill_tokens"] - before["prefill_tokens"] == again.usage.prompt_tokens - reused
    peft = PeftModel.from_pretrained(load_model(str(env["base"])), str(env["paths"]["a1"]))
    assert again.choices[0].message.content.strip() == generate(peft, tokenizer, [turn], max_new_tokens=12)[0]


def test_fifty_concurrent_requests_over_four_adapters(env, offline):
    client, engine = env["client"], env["state"].engine
    models = ["trained", "a1", "a2", "a3"]
    expected = {(m, p): offline(m, p, 8) for m in models for p in PROMPTS}
    steps0, rows0 = engine.stats["decode_steps"], engine.stats["decode_rows"]
    jobs = [(models[i % 4], PROMPTS[i % 2]) for i in range(50)]
    with ThreadPoolExecutor(max_workers=25) as pool:
        results = list(pool.map(lambda job: chat(client, job[0], job[1], max_tokens=8), jobs))
    for (model, prompt), result in zip(jobs, results):
        # Whatever else shared its batch, each row answers exactly as that adapter alone.
        assert result.choices[0].message.content.strip() == expected[(model, prompt)], (model, prompt)
    mean_rows = (engine.stats["decode_rows"] - rows0) / max(1, engine.stats["decode_steps"] - steps0)
    assert mean_rows > 2.0, f"requests were not batched (mean {mean_rows:.2f} rows per decode step)"


def test_adapter_loaded_at_run_time_serves_the_next_request(env, offline):
    client, url = env["client"], env["url"]
    headers = {"Authorization": f"Bearer {KEY}"}
    with pytest.raises(openai.NotFoundError):
        chat(client, "late", PROMPTS[0])
    r = httpx.post(f"{url}/v1/adapters", json={"name": "late", "path": "nested/late"}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["engine"] == "lora"
    assert "late" in [m.id for m in client.models.list().data]
    # rank 16 > every rank loaded so far: the stacks grow and the other adapters stay exact.
    assert chat(client, "late", PROMPTS[0]).choices[0].message.content.strip() == offline("late", PROMPTS[0])
    assert chat(client, "a2", PROMPTS[0]).choices[0].message.content.strip() == offline("a2", PROMPTS[0])
    again = httpx.post(f"{url}/v1/adapters", json={"name": "late", "path": "nested/late"}, headers=headers)
    assert again.status_code == 409
    gone = httpx.delete(f"{url}/v1/adapters/late", headers=headers)
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        chat(client, "late", PROMPTS[0])
    assert httpx.delete(f"{url}/v1/adapters/late", headers=headers).status_code == 404


@pytest.mark.parametrize("path_of", [
    lambda e: str(e["outside"]),                         # absolute path elsewhere
    lambda e: "../outside",                              # traversal
    lambda e: "escape",                                  # symlinked folder pointing out
    lambda e: "sneaky",                                  # weights file symlinked out
])
def test_adapter_paths_outside_adapter_dir_are_refused(env, path_of):
    r = httpx.post(f"{env['url']}/v1/adapters", json={"name": "x", "path": path_of(env)},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "path_not_allowed"
    assert "x" not in env["state"].model_names()


def test_tunesmith_serve_command_serves(tiny_model_dir, env, tmp_path):
    """The real CLI in its own process: loopback by default, adapters from flags, a key, a clean stop."""
    import signal
    import subprocess
    import sys

    from tunesmith.serve.server import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", "--model", str(tiny_model_dir),
                             "--adapter", f"a1={env['paths']['a1']}", "--port", str(port), "--api-key", KEY,
                             "--served-model-name", "base", "--dtype", "fp32"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
                time.sleep(0.2)
        served = chat(client, "a1", PROMPTS[0]).choices[0].message.content
        assert served == chat(env["client"], "a1", PROMPTS[0]).choices[0].message.content
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output[-2000:]
    assert f"serving base, a1 on http://127.0.0.1:{port}/v1 (pid {proc.pid}; fp32 weights)" in output


def test_missing_or_wrong_key_is_401(env):
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=f"{env['url']}/v1", api_key=key or "none", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert info.value.status_code == 401
        assert info.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{env['url']}/v1/chat/completions", content=b"{not json")   # no key at all, bad body
    assert r.status_code == 401
    assert httpx.get(f"{env['url']}/health").status_code == 200                 # health stays open


def test_unknown_model_is_404(env):
    with pytest.raises(openai.NotFoundError) as info:
        chat(env["client"], "no-such-adapter", "hi")
    assert info.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": 5}, "temperature"),
    ({"max_tokens": 901}, "max_tokens"),         # over --max-tokens-limit 900
    ({"n": 9}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"presence_penalty": 0.5}, None),
])
def test_bad_parameters_are_400(env, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        chat(env["client"], "a1", "hi", **kwargs)
    assert info.value.status_code == 400
    if param:
        assert param in info.value.body["message"]


def test_malformed_and_oversized_bodies(env):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = f"{env['url']}/v1/chat/completions"
    bad_json = httpx.post(url, content=b'{"model": "a1", "messages": [', headers=headers)
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    no_messages = httpx.post(url, json={"model": "a1"}, headers=headers)
    assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
    big = httpx.post(url, json={"model": "a1", "messages": [{"role": "user", "content": "x" * 70_000}]}, headers=headers)
    assert big.status_code == 413


def test_completions_sampling_seed_n_and_stop(env):
    client = env["client"]
    greedy = client.completions.create(model="a2", prompt="The quick brown fox", max_tokens=16, temperature=0)
    text = greedy.choices[0].text
    assert greedy.choices[0].finish_reason == "length" and greedy.usage.completion_tokens == 16
    streamed = client.completions.create(model="a2", prompt="The quick brown fox", max_tokens=16, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = client.completions.create(model="a2", prompt="The quick brown fox", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"
    sampled = [client.completions.create(model="a2", prompt="The quick brown fox", max_tokens=10, temperature=1.0,
                                         top_p=0.9, seed=7, n=3) for _ in range(2)]
    texts = [[c.text for c in s.choices] for s in sampled]
    assert texts[0] == texts[1]                      # same seed, same answers
    assert len(set(texts[0])) == 3                   # the n choices use different seeds
    assert sampled[0].usage.completion_tokens == 30


def test_traffic_log_is_training_data(env):
    from tunesmith.data.load import read_samples

    answer = chat(env["client"], "a3", "Log me, please").choices[0].message.content
    log = env["work"] / "traffic.jsonl"
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["adapter"] == "a3" and last["messages"][0] == {"role": "user", "content": "Log me, please"}
    assert last["messages"][-1] == {"role": "assistant", "content": answer}
    assert last["started_at"] <= last["finished_at"]
    result = read_samples(log)
    assert result.format == "messages" and not result.errors
    assert len(result.samples) == len(log.read_text().splitlines())


def test_client_disconnect_stops_the_work(env):
    engine = env["state"].engine
    before, tokens_before = engine.stats["cancelled"], engine.stats["generated_tokens"]
    body = {"model": "a1", "messages": [{"role": "user", "content": "Talk for a long time."}],
            "max_tokens": 900, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{env['url']}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and '"content":"' in line.replace(" ", "") and '"content":""' not in line.replace(" ", ""):
                break                                  # first generated text seen: hang up
    deadline = time.monotonic() + 10
    while engine.stats["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    info = (engine.stats["generated_tokens"] - tokens_before, engine.stats["completed"])
    assert engine.stats["cancelled"] == before + 1, info
    assert engine.load()["running"] == 0
    assert engine.stats["generated_tokens"] - tokens_before < 900     # it stopped early, not at max_tokens


def test_client_timeout_stops_a_non_streamed_request(env):
    engine = env["state"].engine
    before, tokens_before = engine.stats["cancelled"], engine.stats["generated_tokens"]
    impatient = openai.OpenAI(base_url=f"{env['url']}/v1", api_key=KEY, max_retries=0, timeout=0.4)
    with pytest.raises(openai.APITimeoutError):
        chat(impatient, "a2", "Talk for a long time.", max_tokens=900)
    deadline = time.monotonic() + 10
    while engine.stats["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats["cancelled"] == before + 1
    assert engine.stats["generated_tokens"] - tokens_before < 900


def test_full_queue_is_429(tiny_model_dir, tokenizer):
    """An engine that is not running keeps its queue full: the next request is refused, not queued."""
    from tunesmith.models import load_model
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, ServerState

    state = ServerState(ServeOptions(model=str(tiny_model_dir), served_name="base", max_queue=1),
                        load_model(str(tiny_model_dir)), tokenizer, tiny_model_dir)
    with BackgroundServer(state) as url:
        impatient = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=1.0)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        first = ThreadPoolExecutor(1).submit(chat, impatient, "base", "hi")
        deadline = time.monotonic() + 10
        while not state.engine.waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as info:
            chat(client, "base", "hi")
        assert info.value.status_code == 429 and info.value.body["code"] == "queue_full"
        with pytest.raises(openai.APITimeoutError):
            first.result()
        # The first client hung up while queued: the server notices and marks its request cancelled ...
        while not state.engine.waiting[0].cancelled.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state.engine.waiting[0].cancelled.is_set()
        state.engine.start()
        while state.engine.waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        # ... so the engine drops it without computing anything.
        assert state.engine.stats["cancelled"] == 1 and state.engine.stats["generated_tokens"] == 0
    state.close()


@pytest.mark.parametrize("speculation", ["prompt_lookup", "draft_model"])
def test_speculative_decoding_serves_the_same_greedy_answer(speculation, tokenizer, tmp_path):
    """--prompt-lookup (drafts from the prompt) or --draft-model (here the base itself): drafts verified in
    one pass; the client sees plain decoding's answer, streamed or not (a small-weight model repeats
    itself, so prompt-lookup drafts are accepted)."""
    from tests.conftest import make_tiny_llama
    from tunesmith.generation import generate
    from tunesmith.models import load_model
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, ServerState

    model_dir = make_tiny_llama(tokenizer, tmp_path / "looping", seed=1, initializer_range=0.05)
    options = {"prompt_lookup": 6} if speculation == "prompt_lookup" else {"draft_model": str(model_dir)}
    state = ServerState(ServeOptions(model=str(model_dir), served_name="base", dtype="fp32", **options),
                        load_model(str(model_dir)), tokenizer, model_dir)
    state.engine.start()
    expected = generate(load_model(str(model_dir)), tokenizer, [[{"role": "user", "content": p}] for p in PROMPTS],
                        max_new_tokens=40)
    with BackgroundServer(state) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda p: chat(client, "base", p, max_tokens=40).choices[0].message.content, PROMPTS))
        streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, "base", PROMPTS[1], max_tokens=40, stream=True))
    assert [g.strip() for g in got] == expected and streamed.strip() == expected[1]
    assert state.engine.stats["accepted_draft_tokens"] >= 10
    state.close()


def test_emulated_fine_tuning_with_a_beta_per_request(tiny_model_dir, tokenizer, tmp_path):
    """--eft-large: a served adapter up-scaled onto a larger base; eft_beta 0 answers as the large base,
    and the default beta as offline EFT generation does (the engine's per-row LoRA as the small fine-tune)."""
    from peft import PeftModel

    from tests.conftest import make_tiny_llama
    from tunesmith.generation import generate
    from tunesmith.models import load_model
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, ServerState

    large_dir = make_tiny_llama(tokenizer, tmp_path / "large", layers=3, seed=5)
    adapter = _random_lora(tiny_model_dir, tmp_path / "ad", 1, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"])
    state = ServerState(ServeOptions(model=str(tiny_model_dir), served_name="base", eft_large=str(large_dir), eft_beta=0.8,
                                     dtype="fp32"),
                        load_model(str(tiny_model_dir)), tokenizer, tiny_model_dir)
    state.engine.start()
    state.load_adapter("ad", adapter)
    conv = [[{"role": "user", "content": PROMPTS[1]}]]
    tuned = PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(adapter)).eval()
    large = load_model(str(large_dir)).eval()
    with BackgroundServer(state) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        as_large = chat(client, "ad", PROMPTS[1], extra_body={"eft_beta": 0.0}).choices[0].message.content
        upscaled = chat(client, "ad", PROMPTS[1]).choices[0].message.content
    assert as_large.strip() == generate(large, tokenizer, conv, max_new_tokens=12)[0]
    assert upscaled.strip() == generate(tuned, tokenizer, conv, max_new_tokens=12, eft_large=large, eft_beta=0.8)[0]
    assert upscaled != as_large
    state.close()


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_start_up_line_says_what_dtype_auto_chose(native_bf16, monkeypatch):
    import tunesmith.train.trainer as trainer
    from tunesmith.serve.state import describe_precision

    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: native_bf16)
    assert describe_precision("auto") == ("bf16 autocast over fp32 weights (--dtype auto: this CPU has native bf16)"
                                          if native_bf16 else "fp32 weights (--dtype auto: this CPU has no native bf16)")
    assert describe_precision("bf16") == "bf16 weights" and describe_precision("fp32") == "fp32 weights"


def test_dtype_auto_serves_what_eval_generates_in_bf16(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """--dtype auto on a CPU with native bf16 (forced here, so both CPU kinds run it): bf16 autocast with the
    frozen weights held in bf16 on the engine thread, the LoRA stacks in bf16. The base and an IA3 adapter (the
    peft fallback) answer token for token as offline generation with precision bf16 (what `eval` runs there),
    which differs from fp32. A LoRA adapter computes its delta in other products than peft's (stacked, padded
    to the bank's rank), so its bf16 roundings differ a little, and greedy tokens of a random tiny model can
    flip on that (they did on AVX2 kernels): its logits are checked instead, against peft's in bf16, to a small
    fraction of what bf16 itself changes. The weights are fp32 again once the server stops."""
    from peft import PeftModel

    import tunesmith.train.trainer as trainer
    from tunesmith.generation import generate
    from tunesmith.models import load_model
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, ServerState, _load_base, serving_precision
    from tunesmith.train.precision import inference_precision

    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: True)
    assert serving_precision("auto") == ("fp32", "bf16") and serving_precision("bf16") == ("bf16", "fp32")
    adapter = _random_lora(tiny_model_dir, tmp_path / "ad", 3, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    ia3 = _random_ia3(tiny_model_dir, tmp_path / "ia3", 7)
    model = _load_base(tiny_model_dir, "fp32")     # as build_state loads it: frozen, which frozen_linears_in casts
    state = ServerState(ServeOptions(model=str(tiny_model_dir), served_name="base"), model, tokenizer, tiny_model_dir)
    state.engine.start()
    state.load_adapter("ad", adapter)
    state.load_adapter("ia3", ia3)
    convs = [[{"role": "user", "content": p}] for p in PROMPTS]
    offline = {"base": generate(load_model(str(tiny_model_dir)), tokenizer, convs, max_new_tokens=16, precision="bf16"),
               "ia3": generate(PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(ia3)).eval(), tokenizer,
                               convs, max_new_tokens=16, precision="bf16")}
    fp32 = generate(load_model(str(tiny_model_dir)), tokenizer, convs, max_new_tokens=16)
    assert offline["base"] != fp32      # bf16 really changes this model's greedy answers
    with BackgroundServer(state) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        with ThreadPoolExecutor(4) as pool:   # base and adapter rows share steps
            got = dict(zip(["base", "ad", "ia3"], pool.map(
                lambda m: [chat(client, m, p, max_tokens=16).choices[0].message.content.strip() for p in PROMPTS],
                ["base", "ad", "ia3"])))
        held = state.engine.call(lambda: model.model.layers[0].self_attn.q_proj.base.weight.dtype).result()
    assert {k: got[k] for k in offline} == offline and held == torch.bfloat16
    assert got["ad"] != got["base"]
    layer = state.bank.layers["model.layers.0.self_attn.q_proj"]
    assert layer.A.dtype == torch.bfloat16
    # The fallback's own copy of the base is held in bf16 (cast once, not by autocast in every pass) and packed,
    # with no fp32 copy kept beside it; unloading drops it.
    fallback_linear = next(m for m in state.fallback.models["ia3"].modules() if type(m) is torch.nn.Linear)
    assert fallback_linear.weight.dtype == torch.bfloat16
    state.unload_adapter("ia3")
    assert "ia3" not in state.fallback.models and "forward" not in fallback_linear.__dict__
    state.close()
    assert model.model.layers[0].self_attn.q_proj.base.weight.dtype == torch.float32

    # The LoRA rows' numbers: one forward of the served model with the adapter's slot alone (uniform path) and
    # beside a base row (side-by-side path), against peft's model in bf16 and in fp32.
    ids = torch.tensor([tokenizer(PROMPTS[1])["input_ids"]])
    tuned = PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(adapter)).eval()
    with torch.no_grad():
        exact = tuned(input_ids=ids).logits[0]
        with inference_precision(tuned, "bf16"):
            want = tuned(input_ids=ids).logits[0].float()
        bf16_effect = (want - exact).abs().max()
        for rows in ([state.bank.slot_of["ad"]], [state.bank.slot_of["ad"], 0]):
            state.bank.set_rows(rows)
            with inference_precision(model, "bf16"):
                served = model(input_ids=ids.expand(len(rows), -1)).logits[0].float()
            state.bank.clear_rows()
            assert (served - want).abs().max() < 0.25 * bf16_effect   # measured: 0 on AMX and on AVX2 kernels
