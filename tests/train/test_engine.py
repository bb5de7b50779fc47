"""The training engine: exact accumulation, exact resume, DDP equivalence, NaN handling, QLoRA, early stopping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tunesmith.config import load_config
from tunesmith.errors import TrainingDiverged
from tunesmith.events import Events
from tunesmith.pipeline import run
from tunesmith.train.schedule import lr_lambda


def make_config(tmp_path: Path, model_dir: Path, data_path: Path, name: str = "run", **sections) -> Path:
    cfg = {"model": {"base": str(model_dir)},
           "data": {"train": str(data_path), "max_len": 64},
           "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
           "train": {"max_steps": 6, "batch_size": 8, "lr": 1e-2, "warmup_ratio": 0.0, "scheduler": "cosine",
                     "precision": "fp32", "seed": 3},
           "eval": {"enabled": False},
           "output": {"dir": str(tmp_path / name)}}
    for section, values in sections.items():
        cfg[section].update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in _rows(run_dir)]


def test_accumulation_equals_one_big_batch(tmp_path, tiny_model_dir, memo_data):
    """1 micro-batch of 8 vs 4 micro-batches of 2: same per-step loss and same weights, to 1e-5."""
    big = run(load_config(make_config(tmp_path, tiny_model_dir, memo_data, "big")), events=Events())
    small = run(load_config(make_config(tmp_path, tiny_model_dir, memo_data, "small", train={"micro_batch_size": 2})),
                events=Events())
    a, b = losses(big.run_dir), losses(small.run_dir)
    assert len(a) == len(b) == 6
    assert a[-1] < a[0] - 1.0  # it trained
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (a, b)
    from safetensors.torch import load_file

    wa = load_file(big.run_dir / "adapter" / "adapter_model.safetensors")
    wb = load_file(small.run_dir / "adapter" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)


def test_loss_is_token_weighted_not_mean_of_means(tmp_path, tiny_model_dir, tokenizer):
    """With very unequal target counts, the step loss is sum(NLL)/sum(targets) over micro-batches."""
    from tunesmith.data.packing import collate
    from tunesmith.data.schema import Sample
    from tunesmith.data.tokenize import tokenize_all
    from tunesmith.models import load_model
    from tunesmith.train.loss import CausalLMLoss

    samples = [Sample(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a " * n}])
               for n in (1, 40)]
    examples, _ = tokenize_all(tokenizer, samples, max_len=128)
    model = load_model(str(tiny_model_dir))
    loss = CausalLMLoss(model)
    parts = []
    for ex in examples:
        b = collate([ex], pack=True, max_len=128, pad_id=0)
        nll, n = loss(b.input_ids, b.position_ids, b.targets)
        parts.append((float(nll), int(n)))
    both = collate(examples, pack=True, max_len=128, pad_id=0)
    nll, n = loss(both.input_ids, both.position_ids, both.targets)
    token_weighted = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    mean_of_means = sum(p[0] / p[1] for p in parts) / 2
    assert abs(float(nll) / int(n) - token_weighted) < 1e-5
    assert abs(token_weighted - mean_of_means) > 1e-3  # the two definitions really differ here


# Runs `tunesmith train` as the console script does, but the process stops itself (SIGSTOP) right
# after writing metrics row STOP_AT: the SIGKILL then lands mid-run at a known step, two steps past
# the last checkpoint, however fast or slow the machine is.
STOP_AT_SCRIPT = Path(__file__).with_name("stop_at_row.py")


def test_sigkill_then_resume_reproduces_uninterrupted_losses(tmp_path, tiny_model_dir, memo_data):
    train = {"max_steps": 16, "batch_size": 4, "save_every": 4, "keep_checkpoints": 2}
    method = {"dropout": 0.1}  # dropout makes the RNG state part of what must be restored
    ref = run(load_config(make_config(tmp_path, tiny_model_dir, memo_data, "ref", train=train, method=method)),
              events=Events())
    cfg = make_config(tmp_path, tiny_model_dir, memo_data, "killed", train=train, method=method)
    stderr = tmp_path / "killed.stderr"
    with open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, str(STOP_AT_SCRIPT), "10", "stop", "train", str(cfg), "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), f"training exited before step 10: {stderr.read_text()[-2000:]}"
    finally:
        proc.kill()
        proc.wait()
    run_dir = tmp_path / "killed"
    # The kill landed mid-run: 10 of 16 steps logged, the latest checkpoint at step 8, no final adapter.
    assert [r["step"] for r in _rows(run_dir)] == list(range(1, 11))
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step-000004", "step-000008"], ckpts  # and no half-written checkpoint left behind
    assert not (run_dir / "adapter").exists()
    r = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(cfg), "--quiet", "--resume"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = losses(ref.run_dir), losses(run_dir)
    assert [r["step"] for r in _rows(run_dir)] == list(range(1, 17))  # rows 9, 10 of the killed run replaced
    assert len(a) == len(b) == 16
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, list(zip(a, b))
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["steps"] == 16 and summary["first_loss"] == pytest.approx(a[0], abs=1e-6)


def test_two_process_ddp_matches_one_process(tmp_path, tiny_model_dir, memo_data):
    """torchrun with 2 CPU processes (gloo) and the same global batch gives the same loss curve to 1e-4."""
    one = run(load_config(make_config(tmp_path, tiny_model_dir, memo_data, "one")), events=Events())
    cfg = make_config(tmp_path, tiny_model_dir, memo_data, "two")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "tunesmith", "train", str(cfg), "--quiet"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(one.run_dir), losses(tmp_path / "two")
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)


def test_nan_stops_the_run_naming_the_step_and_keeps_the_checkpoint(tmp_path, tiny_model_dir, memo_data):
    from tunesmith.methods import registry

    cfg = load_config(make_config(tmp_path, tiny_model_dir, memo_data, "nan",
                                  train={"max_steps": 10, "batch_size": 4, "save_every": 3}))
    real = registry.get_method("lora").prepare
    steps = {"n": 0}

    def prepare_with_fault(model, method_cfg, lr):
        prepared = real(model, method_cfg, lr)

        def poison_after_step_5():
            steps["n"] += 1
            if steps["n"] == 5:  # corrupt a real weight: step 6's forward produces NaN
                with torch.no_grad():
                    next(p for p in prepared.model.parameters() if p.requires_grad).fill_(float("nan"))
        prepared.hooks.after_step = poison_after_step_5
        return prepared

    lora = registry.METHODS["lora"]
    lora.prepare = prepare_with_fault
    try:
        with pytest.raises(TrainingDiverged) as e:
            run(cfg, events=Events())
    finally:
        del lora.prepare
    assert "at step 6" in e.value.message
    ckpt = tmp_path / "nan" / "checkpoints" / "step-000003"
    from safetensors.torch import load_file

    state = load_file(ckpt / "trainable.safetensors")
    assert state and all(torch.isfinite(v).all() for v in state.values())
    assert not (tmp_path / "nan" / "checkpoints" / "step-000006").exists()


def test_early_stopping_keeps_and_restores_the_best(tmp_path, tiny_model_dir, memo_data):
    # A huge constant LR makes validation loss get worse after the first improvement.
    cfg = load_config(make_config(tmp_path, tiny_model_dir, memo_data, "es",
                                  data={"val_split": 0.25},
                                  train={"max_steps": 40, "batch_size": 4, "eval_every": 2, "lr": 0.3,
                                         "scheduler": "constant", "early_stopping_patience": 2}))
    result = run(cfg, events=Events()).train
    rows = [json.loads(line) for line in (tmp_path / "es" / "metrics.jsonl").read_text().splitlines()]
    vals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    best_step, best_val = min(vals, key=lambda x: x[1])
    assert result.stopped_early and result.steps < 40
    assert result.best_step == best_step and abs(result.best_val_loss - best_val) < 1e-9
    assert (tmp_path / "es" / "checkpoints" / f"step-{best_step:06d}").is_dir()


def test_qlora_trains_on_cpu_and_its_adapter_loads(tmp_path, tokenizer, memo_data):
    import bitsandbytes as bnb  # in the [all] extra `make test` installs: missing is a failure, not a skip
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.conftest import make_tiny_llama
    from tunesmith.methods import registry

    model_dir = make_tiny_llama(tokenizer, tmp_path / "m", hidden=128)
    cfg = load_config(make_config(tmp_path, model_dir, memo_data, "q", method={"name": "qlora"},
                                  train={"max_steps": 20, "batch_size": 4, "precision": "bf16"}))
    qlora = registry.METHODS["qlora"]
    seen = {}

    def prepare_and_look(model, method_cfg, lr):  # the real prepare; only records what it was given
        seen["model"] = model
        return type(qlora).prepare(qlora, model, method_cfg, lr)

    qlora.prepare = prepare_and_look
    try:
        result = run(cfg, events=Events()).train
    finally:
        del qlora.prepare
    four_bit = [m for m in seen["model"].modules() if isinstance(m, bnb.nn.Linear4bit)]
    # Every decoder linear (7 per layer, 2 layers) trained over a packed NF4 base.
    assert len(four_bit) == 14, len(four_bit)
    assert all(m.weight.quant_state.quant_type == "nf4" and m.weight.dtype == torch.uint8 for m in four_bit)
    assert result.final_loss < 0.6 * result.first_loss, (result.first_loss, result.final_loss)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "q" / "adapter"))
    ids = torch.randint(0, 1000, (1, 9))
    with torch.no_grad():
        assert torch.isfinite(peft_model(input_ids=ids).logits).all()
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())


def test_schedules_warm_up_then_decay():
    f = lr_lambda("cosine", total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)
    g = lr_lambda("linear", 100, 0)
    assert g(50) == pytest.approx(0.5)
    assert lr_lambda("constant", 100, 0)(99) == 1.0
