"""The generation package's pieces on their own: left padding and positions, stop tokens, scoring
logits, generate() arguments, the engine's public row API as a fallback path uses it, its layering
(no eval, no serve), and no library FutureWarning from our decoding."""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings

import torch

from tunesmith.generation import (
    Engine,
    GenRequest,
    LoRABank,
    generate_kwargs,
    generate_tokens,
    left_pad,
    next_token_logits,
    positions,
    stop_token_ids,
)
from tunesmith.generation.errors import AdapterUnloaded, GenerationError, RequestTimedOut
from tunesmith.generation.stops import cut_at_stop


def test_left_pad_and_positions():
    ids, mask = left_pad([[5, 6, 7], [8]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]            # the real token of row 1 is at 0
    assert positions(mask, offset=4).tolist() == [[4, 5, 6], [4, 4, 4]]


def test_stops(tokenizer):
    stops = stop_token_ids(tokenizer)
    assert tokenizer.eos_token_id in stops and tokenizer.convert_tokens_to_ids("<|im_end|>") in stops
    assert cut_at_stop([100, 101, stops[0], 102], stops) == [100, 101] and cut_at_stop([100, 101], stops) == [100, 101]


def test_generate_kwargs():
    greedy = generate_kwargs(8, 0, [2], 0.0, 0.9)
    assert greedy == dict(max_new_tokens=8, pad_token_id=0, eos_token_id=[2], do_sample=False, temperature=None,
                          top_p=None, top_k=None)
    assert generate_kwargs(8, 0, [2], 0.7, 0.9, top_k=50) | {} == dict(
        max_new_tokens=8, pad_token_id=0, eos_token_id=[2], do_sample=True, temperature=0.7, top_p=0.9, top_k=50)


def test_next_token_logits_match_a_plain_forward_per_prompt(tiny_model_dir):
    from tunesmith.models import load_model

    model = load_model(str(tiny_model_dir)).eval()
    prompts = [[1, 2, 3, 4, 5], [7, 8]]
    got = next_token_logits(model, prompts)                            # (2, V), left-padded together
    with torch.no_grad():
        for row, ids in enumerate(prompts):
            alone = model(input_ids=torch.tensor([ids])).logits[0, -1]
            torch.testing.assert_close(got[row], alone, atol=1e-5, rtol=1e-4)


def test_no_future_warning_from_our_decoding(tiny_model_dir, tokenizer):
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    from tunesmith.models import load_model

    convs = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Hello there, how are you?"}]]
    models = [load_model(str(tiny_model_dir))]
    for config in (LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"]),
                   PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
                   PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)):
        models.append(get_peft_model(load_model(str(tiny_model_dir)), config))   # peft's own warnings stay out
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for model in models:
            generate_tokens(model, tokenizer, convs, max_new_tokens=3)
            generate_tokens(model, tokenizer, convs, max_new_tokens=3, temperature=0.8)
        engine = Engine(models[0], tokenizer, LoRABank(models[0]), stop_token_ids(tokenizer))
        events = _run(engine, [GenRequest(prompt_ids=[1, 2, 3], sink=None, temperature=0, max_tokens=4)])
    assert events[-1].finish_reason == "length" and events[-1].error is None


def _run(engine, rows, timeout=30):
    events, done = [], threading.Semaphore(0)

    def sink(event):
        events.append(event)
        if event.final:
            done.release()

    for row in rows:
        row.sink = sink
    engine.start()
    engine.submit(rows)
    for _ in rows:
        assert done.acquire(timeout=timeout)
    engine.stop()
    return events


class ScriptedFallback:
    """A FallbackPath that answers through the engine's public row API only, as PeftFallback does."""

    def __init__(self, tokens):
        self.tokens = tokens
        self.batches = []

    def names(self):
        return {"scripted", "gone"}

    def run(self, rows, engine):
        import time

        self.batches.append([r.index for r in rows])
        for row in rows:
            if row.adapter == "gone":
                engine.fail(row, AdapterUnloaded(row.adapter))
                continue
            for token in self.tokens:
                if row.done or engine.drop_if_expired(row, time.monotonic()):
                    break
                engine.accept(row, token)
            if not row.done:
                engine.finish(row, "stop")


def test_a_fallback_path_reports_through_the_public_row_api(tiny_model_dir, tokenizer):
    from tunesmith.models import load_model

    model = load_model(str(tiny_model_dir))
    words = tokenizer("one two three", add_special_tokens=False)["input_ids"]
    fallback = ScriptedFallback(words)
    engine = Engine(model, tokenizer, LoRABank(model), stop_token_ids(tokenizer), fallback=fallback)
    rows = [GenRequest(prompt_ids=[1], sink=None, adapter="scripted", temperature=0, max_tokens=2, index=0),
            GenRequest(prompt_ids=[1], sink=None, adapter="scripted", temperature=0, max_tokens=9, index=1, stop=("two",)),
            GenRequest(prompt_ids=[1], sink=None, adapter="gone", temperature=0, index=2),
            GenRequest(prompt_ids=[1], sink=None, adapter="scripted", temperature=0, index=3, timeout_s=0.0)]
    events = _run(engine, rows)
    by_index = {i: [e for e in events if e.index == i] for i in range(4)}
    assert "".join(e.text for e in by_index[0]) == tokenizer.decode(words[:2]) and by_index[0][-1].finish_reason == "length"
    assert "".join(e.text for e in by_index[1]).strip() == "one" and by_index[1][-1].finish_reason == "stop"
    assert isinstance(by_index[2][-1].error, AdapterUnloaded) and by_index[2][-1].error.status == 404
    late = by_index[3][-1].error
    assert isinstance(late, RequestTimedOut) and isinstance(late, GenerationError) and late.status == 504
    assert engine.stats["timed_out"] == 1 and engine.stats["completed"] == 2


def _imports(folder) -> set[str]:
    import ast

    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
    return names


def test_layering():
    """generation/ imports neither eval nor serve; serve/ does not import eval; the serve options import
    without fastapi (the CLI builds its flags from them)."""
    from pathlib import Path

    import tunesmith

    src = Path(tunesmith.__file__).parent
    assert not {m for m in _imports(src / "generation") if m.startswith(("tunesmith.eval", "tunesmith.serve"))}
    assert not {m for m in _imports(src / "serve") if m.startswith("tunesmith.eval")}
    code = "import sys, tunesmith.serve.options; print(sorted(m for m in sys.modules if m.startswith('fastapi')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
