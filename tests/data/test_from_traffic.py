"""`tunesmith data from-traffic`: a real `tunesmith serve` (tiny model, one LoRA adapter) logs requests
tagged through the OpenAI `metadata` field; the log becomes a filtered, deduplicated, split dataset,
optionally relabelled by a teacher (the scripted HTTP teacher of tests/synth)."""

from __future__ import annotations

import json

import openai
import pytest
import torch

from tests.synth.teacher_server import RunningTeacher, ScriptedTeacher
from tunesmith.cli import main
from tunesmith.data.load import load_samples

SYSTEM = "You are the order desk of Brakkel. Answer briefly."


def _lora(base_dir, out):
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(1)
    get_peft_model(load_model(str(base_dir)), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, init_lora_weights=False,
                                                         target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def traffic(tiny_model_dir, tmp_path_factory):
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, build_state

    work = tmp_path_factory.mktemp("traffic")
    log = work / "traffic.jsonl"
    options = ServeOptions(model=str(tiny_model_dir), served_name="base", adapters={"a1": str(_lora(tiny_model_dir, work / "a1"))},
                           default_max_tokens=6, traffic_log=str(log))
    state = build_state(options)
    with BackgroundServer(state) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)

        def ask(model, prompt, tags=None, **kw):
            return client.chat.completions.create(model=model, messages=[{"role": "system", "content": SYSTEM},
                                                                         {"role": "user", "content": prompt}],
                                                  temperature=0, max_tokens=kw.pop("max_tokens", 6), metadata=tags, **kw)

        for i in range(10):
            ask("base", f"Where is order number {i} today?", {"task": "orders", "user": f"u{i % 3}"})
        ask("base", "Where is order number 3 today?", {"task": "orders"})          # an exact repeat
        for i in range(3):
            ask("a1", f"Tell me a joke about kettles, version {i}", {"task": "chitchat"})
        ask("base", "An untagged question about lamps")
        with pytest.raises(openai.BadRequestError):
            ask("base", "too many tags", {f"k{i}": "v" for i in range(17)})
    state.close()
    return work, log


def cli(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_server_logs_request_metadata(traffic):
    _, log = traffic
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 15
    assert records[0]["metadata"] == {"task": "orders", "user": "u0"} and records[-1]["metadata"] == {}
    assert [r["adapter"] for r in records[11:14]] == ["a1"] * 3


def test_from_traffic_filters_strips_dedups_and_splits(traffic, tmp_path, capsys):
    _, log = traffic
    out = tmp_path / "orders.jsonl"
    # The tiny random model never says EOS in 6 tokens: every answer is cut off, and dropped by default.
    code, stdout, err = cli(["data", "from-traffic", str(log), "-o", str(out), "--model", "base", "--tag", "task=orders",
                             "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["dropped"]["answer cut off at max_tokens"] == 11 and json.loads(stdout)["kept"] == 0
    code, stdout, err = cli(["data", "from-traffic", str(log), "-o", str(out), "--model", "base", "--tag", "task=orders",
                             "--keep-truncated", "--test-fraction", "0.3", "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["records"] == 15
    assert report["dropped"] == {"other model": 3, "tags do not match": 1, "exact duplicate": 1}
    assert report["stripped_system_prompt"] == SYSTEM
    assert report["kept"] == 10 and report["train"] + report["test"] == 10 and 0 < report["test"] < 10
    train, test = load_samples(out), load_samples(tmp_path / "orders.test.jsonl")
    assert len(train) == report["train"] and len(test) == report["test"]
    assert all(s.messages[0]["role"] == "user" for s in train + test)
    assert not {s.messages[0]["content"] for s in train} & {s.messages[0]["content"] for s in test}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["provenance"]["metadata"]["task"] == "orders" and r["provenance"]["model"] == "base" for r in rows)
    # The split goes by prompt: the same log gives the same split, and more tags narrow it down.
    code, stdout, _ = cli(["data", "from-traffic", str(log), "-o", str(tmp_path / "u0.jsonl"), "--tag", "user=u0",
                           "--keep-truncated", "--test-fraction", "0", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["kept"] == 4


def test_from_traffic_relabels_with_a_teacher_and_rejects_bad_input(traffic, tmp_path, capsys):
    _, log = traffic
    teacher = ScriptedTeacher()
    out = tmp_path / "relabelled.jsonl"
    with RunningTeacher(teacher) as url:
        code, stdout, err = cli(["data", "from-traffic", str(log), "-o", str(out), "--adapter", "a1", "--test-fraction", "0",
                                 "--keep-truncated", "--relabel", "openai:scripted", "--teacher-url", url, "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["kept"] == 3 and report["teacher"]["requests"] == 3
    answers = [r["messages"][-1]["content"] for r in map(json.loads, out.read_text().splitlines())]
    assert answers == [f"TEACHER ANSWER: YOU ARE THE ORDER DESK OF BRAKKEL. ANSWER BRIEFLY.\nTELL ME A JOKE ABOUT KETTLES, VERSION {i}"
                       for i in range(3)]
    code, _, err = cli(["data", "from-traffic", str(log), "-o", str(out), "--since", "last tuesday"], capsys)
    assert code == 2 and "--since 'last tuesday': not an ISO date or time" in err
    code, _, err = cli(["data", "from-traffic", str(tmp_path / "nope.jsonl"), "-o", str(out)], capsys)
    assert code == 2 and "traffic log not found" in err
