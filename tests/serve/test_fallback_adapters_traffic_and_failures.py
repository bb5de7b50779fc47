"""Serving, continued: bottleneck and VeRA adapters, the traffic log under hang-ups, adapter load
failures as 400s and bugs as OpenAI-shaped 500s, nested symlink escapes, and CLI flag checks.

A real uvicorn on 127.0.0.1 and the official `openai` client, over the tiny random Llama."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch

from tests.serve.test_api import chat, offline_answers

PROMPTS = ["Code for item 3?", "Hello there"]


def _lora(base_dir: Path, out: Path, seed: int, **kw) -> Path:
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(seed)
    get_peft_model(load_model(str(base_dir)), LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **kw)).save_pretrained(out)
    return out


def _vera(base_dir: Path, out: Path, seed: int) -> Path:
    from peft import VeraConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(seed)
    model = get_peft_model(load_model(str(base_dir)), VeraConfig(task_type="CAUSAL_LM", r=16, target_modules=["q_proj", "v_proj"],
                                                                  save_projection=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vera_lambda" in name:          # lambda_b starts at 0 (the identity): make it change something
                p.uniform_(1.0, 3.0)
    model.save_pretrained(out)
    return out


def _trained_bottleneck(base_dir: Path, data: Path, run_dir: Path) -> Path:
    from tunesmith.config import load_config
    from tunesmith.events import Events
    from tunesmith.pipeline import run

    cfg = load_config(None, [f"model.base={base_dir}", f"data.train={data}", "data.val_split=0", "data.max_len=64",
                             "method.name=bottleneck", "method.bottleneck_size=16", "train.max_steps=20",
                             "train.batch_size=4", "train.lr=1e-2", "train.warmup_ratio=0", "train.precision=fp32",
                             "eval.enabled=false", f"output.dir={run_dir}"])
    run(cfg, events=Events())
    return run_dir / "adapter"


@pytest.fixture(scope="module")
def srv(tiny_model_dir, tokenizer, tmp_path_factory):

    from tests.conftest import make_tiny_llama
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, build_state

    work = tmp_path_factory.mktemp("serve-more")
    root = work / "adapters"
    root.mkdir()
    memo = work / "memo.jsonl"
    memo.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Code for item {i}?"},
                                                     {"role": "assistant", "content": f"ITEM-{i:03d}"}]}) + "\n"
                            for i in range(16)))
    paths = {"bn": _trained_bottleneck(tiny_model_dir, memo, root / "bn-run"),
             "vera": _vera(tiny_model_dir, root / "vera", 3),
             "a1": _lora(tiny_model_dir, root / "a1", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])}

    corrupt = root / "corrupt"
    corrupt.mkdir()
    shutil.copy(paths["a1"] / "adapter_config.json", corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}garbage")

    # DoRA (the peft fallback) trained on a base of another width, with no record of that base.
    other = make_tiny_llama(tokenizer, work / "other-base", hidden=32)
    foreign = _lora(other, root / "foreign", 4, r=2, lora_alpha=4, use_dora=True, target_modules=["q_proj"])
    cfg = json.loads((foreign / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": "/nowhere"}))

    outside = work / "outside-secret.txt"
    outside.write_text("not yours")
    deep = root / "deep"
    shutil.copytree(paths["a1"], deep)
    (deep / "extra" / "more").mkdir(parents=True)
    os.symlink(outside, deep / "extra" / "more" / "notes.txt")          # a nested file linking out

    options = ServeOptions(model=str(tiny_model_dir), served_name="base", adapters={k: str(v) for k, v in paths.items()},
                           adapter_dir=str(root), max_batch=8, max_tokens_limit=900, default_max_tokens=12,
                           traffic_log=str(work / "traffic.jsonl"),
                           dtype="fp32")   # answers are checked token for token against fp32 `generate`
    state = build_state(options)
    bg = BackgroundServer(state)

    async def boom():
        raise RuntimeError("a bug in a route")

    bg.server.config.app.app.add_api_route("/v1/boom", boom)      # stands in for any route that hits a bug
    with bg as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        yield {"url": url, "client": client, "state": state, "paths": paths, "root": root, "work": work,
               "base": tiny_model_dir, "log": work / "traffic.jsonl"}
    state.close()


@pytest.fixture(scope="module")
def offline(srv, tokenizer):
    """Greedy answers from plain `generate` on base + adapter, applied as `tunesmith eval` applies it."""
    from tunesmith.methods import load_trained

    return offline_answers(srv["base"], tokenizer, lambda base, path: base if path is None else load_trained(base, path))


def _log_lines(srv) -> list[dict]:
    path = srv["log"]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- adapters the per-row stacks cannot hold ------------------------------------------------------------

@pytest.mark.parametrize("model, method", [("bn", "bottleneck"), ("vera", "vera")])
def test_fallback_adapter_is_served_like_offline_generation(srv, offline, model, method):
    listed = {m.id: m.model_dump() for m in srv["client"].models.list().data}
    assert listed[model]["engine"] == "peft" and listed[model]["method"] == method
    changed = 0
    for prompt in PROMPTS:
        got = chat(srv["client"], model, prompt).choices[0].message.content.strip()
        assert got == offline(srv["paths"][model], prompt)
        changed += got != offline(None, prompt)
    assert changed >= 1, "the adapter did not change any answer: this test could not tell it was applied"


def test_bottleneck_adapter_loads_at_run_time_from_adapter_dir(srv, offline):
    r = httpx.post(f"{srv['url']}/v1/adapters", json={"name": "bn-late", "path": "bn-run/adapter"})
    assert r.status_code == 200, r.text
    assert r.json()["method"] == "bottleneck" and r.json()["engine"] == "peft"
    got = chat(srv["client"], "bn-late", PROMPTS[0]).choices[0].message.content.strip()
    assert got == offline(srv["paths"]["bn"], PROMPTS[0])
    assert httpx.delete(f"{srv['url']}/v1/adapters/bn-late").status_code == 200


def test_vllm_command_lists_a_bottleneck_adapter_as_not_passed(srv):
    from tunesmith.serve.vllm import vllm_command

    command, notes = vllm_command(srv["base"], {"bn": srv["paths"]["bn"], "a1": srv["paths"]["a1"]})
    assert "bn=" not in command and f"a1={srv['paths']['a1'].resolve()}" in command
    assert notes == ["bn: not passed to vLLM (method bottleneck); it cannot be merged into the base weights either; "
                     "serve it with `tunesmith serve`"]


# -- traffic log ------------------------------------------------------------------------------------------

def test_cut_short_requests_write_no_traffic_line(srv):
    engine = srv["state"].engine
    before = len(_log_lines(srv))
    cancelled = engine.stats["cancelled"]

    impatient = openai.OpenAI(base_url=f"{srv['url']}/v1", api_key="none", max_retries=0, timeout=0.4)
    with pytest.raises(openai.APITimeoutError):
        chat(impatient, "a1", "Talk for a long time.", max_tokens=900)
    body = {"model": "a1", "messages": [{"role": "user", "content": "Talk for a long time, streamed."}],
            "max_tokens": 900, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{srv['url']}/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if '"content":"' in line.replace(" ", "") and '"content":""' not in line.replace(" ", ""):
                break                                  # first generated text: hang up
    deadline = time.monotonic() + 20
    while engine.stats["cancelled"] < cancelled + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats["cancelled"] == cancelled + 2

    done = chat(srv["client"], "a1", "Log only me.", max_tokens=6)
    lines = _log_lines(srv)
    assert len(lines) == before + 1, [line["messages"][0]["content"] for line in lines[before:]]
    assert lines[-1]["messages"] == [{"role": "user", "content": "Log only me."},
                                     {"role": "assistant", "content": done.choices[0].message.content}]
    assert lines[-1]["finish_reason"] == done.choices[0].finish_reason in ("stop", "length")
    assert all(line["finish_reason"] in ("stop", "length") for line in lines)


def test_a_server_timeout_writes_no_traffic_line(srv):
    state = srv["state"]
    before = len(_log_lines(srv))
    state.options.request_timeout_s = 0.0       # read per request: every new request is late at once
    try:
        with pytest.raises(openai.APIStatusError) as info:
            chat(srv["client"], "a1", "Too late", max_tokens=8)
        with pytest.raises(openai.APIError) as streamed:      # the error arrives as an SSE event
            list(chat(srv["client"], "a1", "Too late, streamed", max_tokens=8, stream=True))
    finally:
        state.options.request_timeout_s = 300.0
    assert info.value.status_code == 504
    assert "timed out" in streamed.value.message
    assert len(_log_lines(srv)) == before


# -- errors ----------------------------------------------------------------------------------------------

def test_corrupt_adapter_file_is_400_naming_it_and_the_server_keeps_serving(srv):
    client = srv["client"]
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/adapters", body={"name": "bad", "path": "corrupt"}, cast_to=object)
    message = info.value.body["message"]
    assert str(srv["root"] / "corrupt" / "adapter_model.safetensors") in message
    assert "not a readable safetensors file" in message and "Traceback" not in message
    assert "bad" not in [m.id for m in client.models.list().data]
    assert chat(client, "a1", PROMPTS[1]).choices[0].finish_reason in ("stop", "length")


def test_fallback_adapter_for_another_base_is_400(srv):
    client = srv["client"]
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/adapters", body={"name": "foreign", "path": "foreign"}, cast_to=object)
    message = info.value.body["message"]
    assert f"adapter 'foreign' at {srv['root'] / 'foreign'} could not be loaded" in message
    assert "size mismatch" in message and "this server's base model" in message
    assert info.value.body["code"] == "invalid_adapter"
    assert "foreign" not in [m.id for m in client.models.list().data]
    assert chat(client, "a1", PROMPTS[1]).choices[0].finish_reason in ("stop", "length")


def test_a_bug_is_an_openai_shaped_500(srv, caplog):
    with pytest.raises(openai.InternalServerError) as info:
        srv["client"].get("/boom", cast_to=object)
    assert info.value.status_code == 500
    assert info.value.body == {"message": "Internal server error (RuntimeError); the server log has the details.",
                               "type": "server_error", "param": None, "code": "internal_error"}
    deadline = time.monotonic() + 5
    while not any(r.exc_info for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]        # the traceback stays server-side
    assert [str(e) for e in logged] == ["a bug in a route"]
    assert chat(srv["client"], "a1", PROMPTS[1]).choices[0].finish_reason in ("stop", "length")


def test_a_bug_leaves_the_connection_open(srv):
    """A keep-alive connection that got a 500 serves the next request (the openai SDK reuses pooled
    connections; a server that closed it made that next request fail with "connection reset")."""
    import http.client
    from urllib.parse import urlsplit

    conn = http.client.HTTPConnection(urlsplit(srv["url"]).netloc, timeout=30)
    conn.request("GET", "/v1/boom")
    first = conn.getresponse()
    assert first.status == 500 and json.loads(first.read())["error"]["code"] == "internal_error"
    sock = conn.sock
    for _ in range(3):
        conn.request("GET", "/health")
        again = conn.getresponse()
        assert again.status == 200 and again.read()
        assert conn.sock is sock                   # the same connection, not a reconnect
        conn.request("GET", "/v1/boom")
        assert conn.getresponse().read() and conn.sock is sock
    conn.close()


# -- paths ------------------------------------------------------------------------------------------------

def test_a_nested_file_linking_out_is_refused(srv):
    r = httpx.post(f"{srv['url']}/v1/adapters", json={"name": "deep", "path": "deep"})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "path_not_allowed"
    assert "deep/extra/more/notes.txt" in r.json()["error"]["message"]
    assert "deep" not in srv["state"].model_names()


def test_policy_follows_inner_folder_links_and_survives_cycles(tmp_path, srv):
    from tunesmith.serve.errors import APIError
    from tunesmith.serve.paths import AdapterDirPolicy

    root = tmp_path / "root"
    adapter = root / "ad"
    shutil.copytree(srv["paths"]["a1"], adapter)
    os.symlink(root, adapter / "loop")                     # a cycle: root/ad/loop -> root
    policy = AdapterDirPolicy(root)
    assert policy.check("ad") == adapter.resolve()
    # A folder link that stays inside, to a folder that holds a link out: reading through it escapes.
    (root / "shared").mkdir()
    os.symlink(srv["work"] / "outside-secret.txt", root / "shared" / "w.bin")
    os.symlink(root / "shared", adapter / "shared")
    with pytest.raises(APIError) as info:
        policy.check("ad")
    assert info.value.status == 403 and "shared/w.bin" in info.value.message
    # Bottleneck folders (no adapter_config.json) count as adapters.
    shutil.copytree(srv["paths"]["bn"], root / "bn")
    assert policy.check("bn") == (root / "bn").resolve()


# -- CLI flags, checked before the model loads --------------------------------------------------------------

def test_cli_rejects_bad_port_timeout_and_traffic_log_before_loading(tmp_path, capsys):
    from tunesmith.cli import main

    (tmp_path / "afile").write_text("x")
    missing_model = ["serve", "--model", str(tmp_path / "no-such-model")]     # loading it would fail differently
    cases = [(["--port", "0"], "--port must be in 1..65535 (got 0)"),
             (["--port", "70000"], "--port must be in 1..65535 (got 70000)"),
             (["--timeout", "0"], "--timeout must be above 0 seconds (got 0)"),
             (["--timeout=-5"], "--timeout must be above 0 seconds (got -5)"),
             (["--timeout", "nan"], "--timeout must be above 0 seconds (got nan)"),
             (["--traffic-log", str(tmp_path / "nodir" / "t.jsonl")], f"the folder {tmp_path / 'nodir'} does not exist"),
             (["--traffic-log", str(tmp_path / "afile" / "t.jsonl")], f"the folder {tmp_path / 'afile'} is not a folder"),
             (["--traffic-log", str(tmp_path)], "is a folder")]
    for flags, message in cases:
        with pytest.raises(SystemExit) as info:
            main([*missing_model, *flags])
        captured = capsys.readouterr()
        assert info.value.code == 2, (flags, captured.err)
        assert message in captured.err.replace("\n", " ") or message in captured.err, (flags, captured.err)
        assert "Traceback" not in captured.err and "no-such-model" not in captured.err, (flags, captured.err)


def test_traffic_log_path_checks(tmp_path):
    from tunesmith.errors import UserError
    from tunesmith.serve.traffic import TrafficLog, check_log_path

    assert check_log_path(tmp_path / "new.jsonl") == tmp_path / "new.jsonl"
    with pytest.raises(UserError, match="does not exist"):
        TrafficLog(tmp_path / "missing" / "t.jsonl")
    assert not (tmp_path / "missing").exists()
    if os.geteuid() != 0:                                  # root may write anywhere: nothing to refuse
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(UserError, match="permission denied"):
            check_log_path(locked / "t.jsonl")
