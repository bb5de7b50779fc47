"""The `tunesmith train CONFIG` path used by the quickstart, on a tiny random Llama."""

import json
import subprocess
import sys

import torch

from tunesmith.config import load_config
from tunesmith.events import Events
from tunesmith.pipeline import run


def write_config(tmp_path, model_dir, data, **sections):
    import yaml

    cfg = {"model": {"base": str(model_dir)}, "data": {"train": str(data), "val_split": 0.25, "max_len": 64},
           "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
           "train": {"max_steps": 30, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "scheduler": "constant",
                     "precision": "fp32", "early_stopping_patience": 0},
           "eval": {"metrics": ["exact_match"], "baselines": ["zero-shot"], "max_new_tokens": 8},
           "output": {"dir": str(tmp_path / "run"), "merge": True}}
    for section, values in sections.items():
        cfg[section].update(values)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tiny_llama_trains_through_the_cli(tmp_path, tiny_model_dir, memo_data):
    config = write_config(tmp_path, tiny_model_dir, memo_data)
    r = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(config), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = tmp_path / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30
    first, last = rows[0]["loss"], rows[-1]["loss"]
    # A random 2-layer model memorising 12 short codes: loss falls by at least 60 % in 30 steps.
    assert last < 0.4 * first, (first, last)
    for name in ("config.yaml", "loss.png", "report.md", "report.json", "predictions.jsonl",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "merged/config.json"):
        assert (run_dir / name).exists(), name
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["systems"]) == {"base_zero_shot", "tuned"}


def test_adapter_loads_in_plain_peft_and_merged_equals_it(tmp_path, tiny_model_dir, memo_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = load_config(write_config(tmp_path, tiny_model_dir, memo_data, train={"max_steps": 5}, eval={"enabled": False}))
    run(cfg, events=Events())
    run_dir = tmp_path / "run"
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peft_model = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(run_dir / "merged")).eval()
    ids = torch.randint(0, 1000, (2, 17))
    with torch.no_grad():
        a = peft_model(input_ids=ids).logits
        b = merged(input_ids=ids).logits
        c = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))(input_ids=ids).logits
    assert (a - c).abs().max() > 1e-3  # the adapter really changed the model
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_bad_data_path_is_a_clean_error(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, tmp_path / "nope.jsonl")
    r = subprocess.run([sys.executable, "-m", "tunesmith", "train", str(config)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "nope.jsonl: file not found" in r.stderr
    assert "Traceback" not in r.stderr
