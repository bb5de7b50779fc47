"""Scale-out through accelerate, on CPU over gloo: FSDP2, DeepSpeed ZeRO-2 and ZeRO-3.

Each test launches `accelerate launch --config_file examples/distributed/<config> --num_processes 2`
on the same `tunesmith train` config as a one-process reference run, stops it after step 5 (the
last checkpoint is step 4), resumes it, and checks:
- the loss curve, killed rows and resumed rows together, is the one-process curve to 1e-4 (the
  processes sum their partial losses and gradients over gloo in another order; seen: < 2e-6);
- the run evaluates after training (on the main process, from the saved adapter);
- the final adapter is whole (ZeRO-3 and FSDP shard parameters: each process holds a slice) and
  non-zero, its tensors are the one-process adapter's to 1e-5, and plain PEFT loads it with the
  one-process adapter's logits to 1e-4, far from the base model's.
The one-process resume is exact to 1e-5 (test_engine.py); here resume cannot be told apart from the
one-process uninterrupted run at these tolerances, and a lost optimizer state moves losses by ~1e-2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.train.test_engine import losses, make_config

pytest.importorskip("accelerate")

CONFIGS = REPO / "examples" / "distributed"
# 8 examples per step over 2 processes, 2 per micro-batch: each process accumulates 2 micro-batches,
# so the DeepSpeed boundary and FSDP's gradient reduction over accumulation are both exercised.
TRAIN = {"max_steps": 6, "batch_size": 8, "micro_batch_size": 2, "save_every": 2, "keep_checkpoints": 1}
STOP_AT = 5

# The main process (the only one with a logbook) exits right after writing row STOP_AT, as a
# crash would; the launcher then stops the other process.
STOP_AT_SCRIPT = Path(__file__).with_name("stop_at_row.py")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """The one-process run the distributed ones must reproduce."""
    from tunesmith.config import load_config
    from tunesmith.events import Events
    from tunesmith.pipeline import run

    tmp = tmp_path_factory.mktemp("one-process")
    data = _memo(tmp)
    result = run(load_config(make_config(tmp, tiny_model_dir, data, "one", train=TRAIN)), events=Events())
    return result.run_dir


def _memo(tmp: Path) -> Path:
    from tests.conftest import write_jsonl

    rows = [{"messages": [{"role": "user", "content": f"Code for item {i}?"},
                          {"role": "assistant", "content": f"ITEM-{i:03d}-{'ABCDEFGH'[i % 8]}"}]} for i in range(16)]
    return write_jsonl(tmp / "memo.jsonl", rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(accelerate_config: str, program: list[str], log: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / accelerate_config),
           "--num_processes", "2", "--main_process_port", str(_free_port()), *program]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    with open(log, "w") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=600)


def _logits(base_dir: Path, adapter_dir: Path | None, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    with torch.no_grad():
        return model.eval()(ids).logits  # (1, T, vocab)


@pytest.mark.parametrize(("accelerate_config", "backend"), [
    ("fsdp.yaml", "fsdp2"),
    ("deepspeed_zero2.yaml", "deepspeed-zero2"),
    ("deepspeed_zero3.yaml", "deepspeed-zero3"),
])
def test_two_processes_match_one_and_resume(tmp_path, tiny_model_dir, tokenizer, reference, accelerate_config, backend):
    if backend.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    data = _memo(tmp_path)
    # The main process evaluates after training, on a whole model (each process holds only a shard).
    evaluation = {"enabled": True, "data": str(data), "baselines": [], "max_examples": 4, "max_new_tokens": 8,
                  "perplexity": False, "regression": False}
    cfg = make_config(tmp_path, tiny_model_dir, data, "two", train=TRAIN, eval=evaluation)
    run_dir = tmp_path / "two"

    killed = _launch(accelerate_config, [str(STOP_AT_SCRIPT), str(STOP_AT), "exit", "train", str(cfg), "--quiet"], tmp_path / "killed.log")
    assert killed.returncode != 0, (tmp_path / "killed.log").read_text()[-3000:]
    assert [json.loads(r)["step"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()] == list(range(1, STOP_AT + 1))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000004"]
    assert not (run_dir / "adapter").exists()

    resumed = _launch(accelerate_config, ["-m", "tunesmith", "train", str(cfg), "--quiet", "--resume"],
                      tmp_path / "resumed.log")
    assert resumed.returncode == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert (summary["backend"], summary["processes"]) == (backend, 2)   # not silently plain DDP
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n_examples"] == 4 and list(report["systems"]) == ["tuned"]

    a, b = losses(reference), losses(run_dir)
    assert len(a) == len(b) == 6 and a[-1] < a[0] - 1.0
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, list(zip(a, b))

    from safetensors.torch import load_file

    mine = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    ref = load_file(reference / "adapter" / "adapter_model.safetensors")
    assert mine.keys() == ref.keys() and len(mine) == 28      # q,k,v,o,gate,up,down x A,B x 2 layers
    for name, t in mine.items():
        assert t.shape == ref[name].shape and t.numel() > 0, name
        torch.testing.assert_close(t, ref[name], atol=1e-5, rtol=0)
    assert all(t.abs().max() > 1e-3 for name, t in mine.items() if "lora_B" in name)  # B starts at zero

    ids = tokenizer("Code for item 3? ITEM-003-D", return_tensors="pt").input_ids
    got = _logits(tiny_model_dir, run_dir / "adapter", ids)
    torch.testing.assert_close(got, _logits(tiny_model_dir, reference / "adapter", ids), atol=1e-4, rtol=0)
    assert (got - _logits(tiny_model_dir, None, ids)).abs().max() > 0.1


def test_sharded_backends_refuse_methods_that_save_or_move_parameters_themselves(tiny_model_dir):
    from tunesmith.errors import UserError
    from tunesmith.methods.registry import Prepared, TrainingHooks
    from tunesmith.train.distributed import Fsdp2Layout, Layout

    model = torch.nn.Linear(2, 2)
    custom_saver = Prepared(model, [], kind="adapter", saver=lambda m, d: None)
    moves_base = Prepared(model, [], kind="full", hooks=TrainingHooks(after_step=lambda: None))
    for prepared in (custom_saver, moves_base):
        Layout(None).check(prepared, "ddp")                      # whole parameters: fine
        with pytest.raises(UserError, match="fsdp2 shards") as e:
            Fsdp2Layout(None).check(prepared, "fsdp2")
        assert "DDP" in e.value.hint
    Fsdp2Layout(None).check(Prepared(model, [], kind="adapter"), "fsdp2")   # save_pretrained of gathered tensors
