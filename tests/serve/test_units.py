"""Serving pieces without a server: per-row LoRA vs peft, sampling, stop strings, paths, vLLM command, CLI."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch

from tunesmith.errors import UserError


def _lora(base_dir, out, seed, **kw):
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(seed)
    get_peft_model(load_model(str(base_dir)), LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **kw)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("units")
    return {
        "r2": _lora(tiny_model_dir, root / "r2", 1, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
        "r8": _lora(tiny_model_dir, root / "r8", 2, r=8, lora_alpha=16, target_modules=["o_proj", "down_proj"]),
        "rs": _lora(tiny_model_dir, root / "rs", 3, r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "up_proj"]),
        "dora": _lora(tiny_model_dir, root / "dora", 4, r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj"]),
    }


def test_per_row_lora_matches_peft_for_a_mixed_batch(tiny_model_dir, adapters):
    from peft import PeftModel

    from tunesmith.generation import LoRABank
    from tunesmith.models import load_model
    from tunesmith.serve.adapters import inspect_adapter

    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (5, 7))
    names = ["r2", "r8", "rs"]
    with torch.no_grad():
        reference = {None: load_model(str(tiny_model_dir))(input_ids=ids).logits}
        for name in names:
            reference[name] = PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(adapters[name]))(input_ids=ids).logits
        model = load_model(str(tiny_model_dir))
        bank = LoRABank(model, capacity=2, r_max=2)       # forces slot growth and rank growth
        for name in names:
            spec = inspect_adapter(name, adapters[name])
            assert spec.engine == "lora"
            bank.add(name, spec.weights, spec.rank)
        assert bank.r_max == 8 and bank.capacity >= 4
        rows = [None, "r8", "rs", "r2", "r8"]
        bank.set_rows([0 if r is None else bank.slot_of[r] for r in rows])
        mixed = model(input_ids=ids).logits
        bank.clear_rows()
        for i, name in enumerate(rows):
            torch.testing.assert_close(mixed[i], reference[name][i], atol=2e-5, rtol=1e-4)
        # Unloading zeroes the slot: a row on it is the base model again; the others are untouched.
        bank.remove("r8")
        bank.set_rows([1, 3, 3, 2, 0])
        after = model(input_ids=ids).logits
        bank.clear_rows()
    slot = {v: k for k, v in bank.slot_of.items()}
    for i, s in enumerate([1, 3, 3, 2, 0]):
        expect = reference[slot.get(s)][i]
        torch.testing.assert_close(after[i], expect, atol=2e-5, rtol=1e-4)


def test_dora_and_other_methods_take_the_fallback(adapters):
    from tunesmith.serve.adapters import inspect_adapter

    spec = inspect_adapter("dora", adapters["dora"])
    assert spec.engine == "peft" and "DoRA" in spec.why_fallback and not spec.weights


def test_adapter_for_another_base_is_refused(tiny_model_dir, tokenizer, tmp_path, adapters):

    from tests.conftest import make_tiny_llama
    from tunesmith.models import load_model
    from tunesmith.serve.state import ServeOptions, ServerState

    other = make_tiny_llama(tokenizer, tmp_path / "other", hidden=32)
    wide = _lora(other, tmp_path / "wide", 5, r=2, lora_alpha=2, target_modules=["q_proj"])
    (wide / "tunesmith.json").write_text(json.dumps({"base": str(other)}))
    state = ServerState(ServeOptions(model=str(tiny_model_dir)), load_model(str(tiny_model_dir)), tokenizer, tiny_model_dir)
    with pytest.raises(UserError, match="trained on"):
        state.load_adapter("wide", wide)
    (wide / "tunesmith.json").unlink()                 # no record: the layer shapes still catch it
    (wide / "adapter_config.json").write_text(json.dumps(
        json.loads((wide / "adapter_config.json").read_text()) | {"base_model_name_or_path": "/nowhere"}))
    state.engine.start()
    with pytest.raises(UserError, match=r"q_proj is 32->32 but the base layer is 64->64"):
        state.load_adapter("wide", wide)
    assert state.model_names() == [str(tiny_model_dir)]
    state.close()


def test_top_p_keeps_the_smallest_set_reaching_p():
    from tunesmith.generation import top_p_filter

    probs = torch.tensor([0.05, 0.5, 0.3, 0.15])
    torch.testing.assert_close(top_p_filter(probs, 0.7), torch.tensor([0.0, 0.5, 0.3, 0.0]) / 0.8)
    torch.testing.assert_close(top_p_filter(probs, 0.1), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(top_p_filter(probs, 1.0), probs)


def test_stop_string_text_is_never_streamed(tokenizer):
    from tunesmith.generation import GenRequest
    from tunesmith.generation.detok import advance

    row = GenRequest(prompt_ids=[1], sink=lambda e: None, temperature=0, stop=("END",))
    ids = tokenizer("alpha beta EN", add_special_tokens=False)["input_ids"]
    sent = ""
    for t in ids:
        row.generated.append(t)
        delta, stopped = advance(tokenizer, row, at_limit=False)
        sent += delta
        assert not stopped
    assert sent == "alpha beta "                      # "EN" may still become "END": held back
    row.generated += tokenizer("D gamma", add_special_tokens=False)["input_ids"]
    delta, stopped = advance(tokenizer, row, at_limit=False)
    assert stopped and sent + delta == "alpha beta "


def test_request_timeout_is_504(tiny_model_dir, tokenizer):
    from tunesmith.generation import Engine, GenRequest, LoRABank, stop_token_ids
    from tunesmith.models import load_model

    model = load_model(str(tiny_model_dir))
    engine = Engine(model, tokenizer, LoRABank(model), stop_token_ids(tokenizer)).start()
    events, done = [], threading.Event()

    def sink(event):
        events.append(event)
        if event.final:
            done.set()

    engine.submit([GenRequest(prompt_ids=[1, 2, 3], sink=sink, temperature=0, max_tokens=5, timeout_s=0.0)])
    assert done.wait(10)
    engine.stop()
    assert events[-1].error is not None and events[-1].error.status == 504
    assert engine.stats["timed_out"] == 1 and engine.stats["generated_tokens"] == 0


def test_a_failing_batch_gets_500_and_the_engine_keeps_serving(tiny_model_dir, tokenizer):
    from tunesmith.generation import Engine, GenRequest, LoRABank, stop_token_ids
    from tunesmith.models import load_model

    model = load_model(str(tiny_model_dir))
    engine = Engine(model, tokenizer, LoRABank(model), stop_token_ids(tokenizer))
    results: dict[int, list] = {0: [], 1: []}
    done = threading.Semaphore(0)

    def sink_for(i):
        def sink(event):
            results[i].append(event)
            if event.final:
                done.release()
        return sink

    vocab = model.get_input_embeddings().num_embeddings
    engine.submit([GenRequest(prompt_ids=[1, vocab + 5], sink=sink_for(0), temperature=0, max_tokens=4)])  # index error
    engine.start()
    assert done.acquire(timeout=10)
    engine.submit([GenRequest(prompt_ids=[1, 2, 3], sink=sink_for(1), temperature=0, max_tokens=4)])
    assert done.acquire(timeout=10)
    engine.stop()
    assert results[0][-1].error.status == 500 and "IndexError" in results[0][-1].error.message
    assert results[1][-1].error is None and results[1][-1].completion_tokens == 4


def test_adapter_dir_policy(tmp_path, adapters):
    from tunesmith.serve.errors import APIError
    from tunesmith.serve.paths import AdapterDirPolicy

    root = tmp_path / "root"
    (root / "team").mkdir(parents=True)
    os.symlink(adapters["r2"], root / "team" / "link")
    with pytest.raises(APIError) as info:
        AdapterDirPolicy(None).check("x")
    assert info.value.status == 403
    policy = AdapterDirPolicy(root)
    for bad in [str(adapters["r2"]), "team/../../x", "team/link", "/etc"]:
        with pytest.raises(APIError) as info:
            policy.check(bad)
        assert info.value.status == 403, bad
    with pytest.raises(APIError) as info:
        policy.check("team")                          # inside, but not an adapter
    assert info.value.status == 400


def test_vllm_command(adapters, tiny_model_dir):
    from tunesmith.serve.vllm import vllm_command

    command, notes = vllm_command(tiny_model_dir, {"small": adapters["r2"], "big": adapters["r8"], "d": adapters["dora"]},
                                  served_name="base", port=9000, api_key="$KEY")
    assert command.startswith(f"vllm serve {tiny_model_dir} --served-model-name base --host 127.0.0.1 --port 9000")
    assert f"--lora-modules small={adapters['r2'].resolve()} big={adapters['r8'].resolve()}" in command
    assert "--max-loras 2 --max-lora-rank 8" in command and "d=" not in command
    assert len(notes) == 1 and notes[0].startswith("d: not passed to vLLM (DoRA")


def test_cli_prints_vllm_command_and_rejects_bad_flags(adapters, tiny_model_dir, capsys):
    from tunesmith.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--model", str(tiny_model_dir), "--adapter", f"r2={adapters['r2']}", "--print-vllm-command"])
    assert info.value.code == 0
    assert f"--lora-modules r2={adapters['r2'].resolve()}" in capsys.readouterr().out
    for argv, message in [(["serve", "--adapter", "oops"], "expected NAME=PATH"),
                          (["serve", "--adapter", "a=/no/such/dir"], "no such folder"),
                          (["serve", "--max-batch", "0"], "--max-batch must be at least 1")]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        captured = capsys.readouterr()
        assert message in captured.err and "Traceback" not in captured.err
