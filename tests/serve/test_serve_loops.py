"""`serve --stop-loops`: a served reply that falls into a repetition loop is stopped by eval's rule, with
the limit `tunesmith train` read from the training answers and recorded in the adapter folder."""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest
import torch

from tunesmith.generation.loops import EVERY, MIN_REPEATS, MIN_SPAN, LoopGuard

from ..conftest import make_tiny_llama, write_jsonl

# A block of 6 tokens (" turn left, then right;") repeated 6 times: the training answers allow 6 repeats,
# so the limit is 12.
ANSWER = "Go:" + " turn left, then right;" * 6


@pytest.fixture(scope="module")
def looping(tokenizer, tmp_path_factory):
    """A tiny Llama whose layers add nothing to the residual stream: with its tied head, the greedy next
    token is the current one, so every reply repeats the prompt's last token to its budget; and a LoRA
    adapter trained on it for one step at a negligible rate (it keeps the loop) by `tunesmith train`."""
    from tunesmith.config import load_config
    from tunesmith.data.load import load_samples
    from tunesmith.events import Events
    from tunesmith.models import load_model
    from tunesmith.pipeline import run

    work = tmp_path_factory.mktemp("loops")
    base = make_tiny_llama(tokenizer, work / "base")
    model = load_model(str(base))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(base, safe_serialization=True)
    data = write_jsonl(work / "train.jsonl", [{"messages": [{"role": "user", "content": f"Directions {i}?"},
                                                             {"role": "assistant", "content": ANSWER}]} for i in range(4)])
    cfg = load_config(None, [f"model.base={base}", f"data.train={data}", "data.val_split=0", "method.name=lora",
                             "train.max_steps=1", "train.batch_size=4", "train.lr=1e-12", "train.precision=fp32",
                             f"eval.data={data}", "eval.baselines=[]", "eval.metrics=[exact_match]", "eval.perplexity=false",
                             "eval.regression=false", "eval.max_new_tokens=48", f"output.dir={work / 'run'}"])
    run(cfg, events=Events())
    recorded = work / "run" / "adapter"
    unrecorded = work / "unrecorded"
    shutil.copytree(recorded, unrecorded)
    meta = json.loads((unrecorded / "tunesmith.json").read_text())
    meta.pop("loop_limit")
    (unrecorded / "tunesmith.json").write_text(json.dumps(meta))
    return {"base": base, "recorded": recorded, "unrecorded": unrecorded,
            "limit": LoopGuard.from_samples(tokenizer, load_samples(data)).limit,
            "report": json.loads((work / "run" / "report.json").read_text())}


def test_training_records_the_loop_limit_of_its_answers(looping):
    meta = json.loads((looping["recorded"] / "tunesmith.json").read_text())
    assert looping["limit"] == 12 > 2 * MIN_REPEATS
    assert meta["loop_limit"] == looping["limit"]
    # The run's own evaluation stopped its looping replies by the same limit.
    assert looping["report"]["generation"]["loop_limit"] == looping["limit"]
    assert looping["report"]["loops_stopped"] == {"tuned": 4}


def _serve(looping, **options):
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, build_state

    state = build_state(ServeOptions(model=str(looping["base"]), served_name="base", max_tokens_limit=200,
                                     adapters={"recorded": str(looping["recorded"]),
                                               "unrecorded": str(looping["unrecorded"])}, **options))
    return state, BackgroundServer(state)


def _ask(url: str, model: str) -> tuple[str, int, str]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Which way?"}],
                                       max_tokens=200, temperature=0)
    return r.choices[0].finish_reason, r.usage.completion_tokens, r.choices[0].message.content


def test_a_looping_reply_is_stopped_at_the_adapters_recorded_limit(looping):
    state, server = _serve(looping)
    with server as url:
        stopped = _ask(url, "recorded")
        unchecked = _ask(url, "unrecorded")
        base = _ask(url, "base")
        health = httpx.get(f"{url}/health").json()
    state.close()
    # The first check after MIN_SPAN tokens sees one token repeated 24 times, over the limit of 12.
    first_check = -(-MIN_SPAN // EVERY) * EVERY
    assert stopped[:2] == ("stop", first_check)
    assert unchecked[:2] == ("length", 200) and base[:2] == ("length", 200)    # no limit recorded, no --loop-limit
    assert unchecked[2].startswith(stopped[2])
    assert health["engine"]["loops_stopped"] == 1


def test_loop_limit_checks_models_without_a_record_and_no_stop_loops_turns_it_off(looping):
    state, server = _serve(looping, loop_limit=30)
    with server as url:
        base = _ask(url, "base")
        unchecked = _ask(url, "unrecorded")
        recorded = _ask(url, "recorded")        # its own record (12) wins over --loop-limit
    state.close()
    assert base[:2] == unchecked[:2] == ("stop", 32)    # 32 repeats of one token > 30, at a multiple of EVERY
    assert recorded[:2] == ("stop", 24)
    state, server = _serve(looping, stop_loops=False, loop_limit=30)
    with server as url:
        assert _ask(url, "recorded")[:2] == _ask(url, "base")[:2] == ("length", 200)
    state.close()
