"""Every method through the command line: `tunesmith train` with only method.name changed (plus
the method's own keys), then `tunesmith eval` on what it saved; `methods`, `spectrum scan` and
the merge refusal for methods that cannot be merged.

The CLI runs in-process (`tunesmith.cli.main`, the same entry point as the console script) so
the torch/transformers import is paid once, not once per method.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tunesmith.cli import main
from tunesmith.methods import METHODS

OWN_KEYS = {"prefix": {"num_virtual_tokens": 4}, "prompt": {"num_virtual_tokens": 4},
            "vera": {"vera_r": 32}, "bottleneck": {"bottleneck_size": 8}, "spectrum": {"spectrum_top_percent": 50}}
# The LoRA+ and LoRA-FA optimizers are lora options, run as cases of their own: case -> (method.name, keys).
CLI_CASES = {**{name: (name, OWN_KEYS.get(name, {})) for name in METHODS},
             "lora+loraplus": ("lora", {"loraplus_lr_ratio": 16}), "lora+lora_fa": ("lora", {"lora_fa": True})}


def cli(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def base_config(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("methods-cli")
    rows = [{"messages": [{"role": "user", "content": f"Code for item {i}?"},
                          {"role": "assistant", "content": f"ITEM-{i:03d}"}]} for i in range(12)]
    data = folder / "memo.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": {"base": str(tiny_model_dir)}, "data": {"train": str(data), "val_split": 0.25, "max_len": 64},
           "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
           "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "precision": "fp32"},
           "eval": {"metrics": ["exact_match"], "baselines": ["zero-shot"], "max_new_tokens": 4, "max_examples": 2},
           "output": {"dir": str(folder / "run"), "merge": False}}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_every_method_trains_saves_and_evaluates_from_the_cli(case, base_config, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    name, keys = CLI_CASES[case]
    sets = [f"method.name={name}", f"output.dir={run}"] + [f"method.{k}={v}" for k, v in keys.items()]
    assert cli("train", base_config, "--quiet", *[x for s in sets for x in ("--set", s)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["loss"] > 0 for r in rows)
    report = json.loads((run / "report.json").read_text())
    assert set(report["systems"]) == {"base_zero_shot", "tuned"} and report["n_examples"] == 2

    saved = run / ("model" if (run / "model").is_dir() else "adapter")
    target = ["--model", saved] if saved.name == "model" else ["--model", tiny_model_dir, "--adapter", saved]
    out = tmp_path / "eval"
    assert cli("eval", *target, "--data", base_config.parent / "memo.jsonl",
               "-o", out, "--baselines", "", "--max-new-tokens", "4", "--max-examples", "2", "--quiet") == 0
    again = json.loads((out / "report.json").read_text())
    assert again["n_examples"] == 2 and "tuned" in again["systems"]


@pytest.mark.parametrize("name", ["bottleneck", "prefix"])
def test_unmergeable_methods_refuse_merge_clearly(name, base_config, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", base_config, "--quiet", "--set", f"method.name={name}", "--set", f"output.dir={run}"]
    # Asking the run to merge fails before any training, naming the key.
    assert cli(*args, "--set", "output.merge=true") == 2
    assert "output.merge: method" in capsys.readouterr().err
    assert not (run / "checkpoints").exists()
    assert cli(*args, "--set", "eval.enabled=false") == 0
    capsys.readouterr()
    assert cli("merge", "--adapter", run / "adapter", "-o", tmp_path / "merged") == 2
    err = capsys.readouterr().err
    assert f"'{name}' adapter cannot be folded into the base weights" in err and "Traceback" not in err
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("sets, message", [
    (["method.name=ia3", "method.dora=true"], "method.dora is set but method 'ia3' does not use it"),
    (["method.name=lora", "method.lora_fa=true", "method.loraplus_lr_ratio=16"], "pick one"),
    (["method.name=dora", "method.lora_fa=true"], "LoRA-FA's projected gradient"),
    (["method.name=prefix", "method.loraplus_lr_ratio=16"], "does not use it"),
    (["method.name=lorra"], "did you mean 'lora'"),
    (["method.name=delta_lora", "method.delta_lora_lambda=0", "method.delta_lora_start=5"],
     "method.delta_lora_start=5 with method.delta_lora_lambda=0"),
])
def test_nonsensical_combinations_are_config_errors(sets, message, base_config, tmp_path, capsys):
    args = [x for s in sets + [f"output.dir={tmp_path / 'run'}"] for x in ("--set", s)]
    assert cli("train", base_config, "--quiet", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_methods_lists_every_method_for_a_model(tiny_model_dir, capsys):
    assert cli("methods", "--model", tiny_model_dir) == 0
    text = capsys.readouterr().out
    for name in METHODS:
        assert f"\n{name}:" in text
    # tiny Llama, r=16 on all 7 linear layers of 2 blocks: 2 * 16 * (64+64 + 64+32 + 64+32 + 64+64 + 3*(64+128)) = 32768
    line = next(row for row in text.splitlines() if row.startswith("│ lora "))
    assert "32.77K" in line and "yes" in line
    assert "no" in next(row for row in text.splitlines() if row.startswith("│ bottleneck "))


def test_spectrum_scan_prints_the_table_and_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "scan.json"
    assert cli("spectrum", "scan", tiny_model_dir, "--top-percent", "50", "--json", out) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 14                                   # 7 matrices x 2 layers
    assert sum(r["selected"] for r in rows) == 7             # one of two per type
    assert all(r["snr"] >= 0 and r["edge"] > 0 for r in rows)
    assert "7 of 14 matrices selected" in capsys.readouterr().out


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_spectrum_scan_json_is_strict_for_an_infinite_snr(tokenizer, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from tests.conftest import make_tiny_llama

    folder = make_tiny_llama(tokenizer, tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        # One nonzero entry: singular values (2, 0, ..., 0) exactly, so no energy at or below the edge.
        w = model.model.layers[1].mlp.up_proj.weight
        w.zero_()
        w[3, 5] = 2.0
        model.model.layers[0].mlp.gate_proj.weight.zero_()   # no energy at all: SNR 0, not infinite
    model.save_pretrained(folder)
    out = tmp_path / "scan.json"
    assert cli("spectrum", "scan", folder, "--top-percent", "50", "--json", out) == 0
    rows = {r["name"]: r for r in _strict_json(out.read_text())}
    up = rows["model.layers.1.mlp.up_proj"]
    assert (up["snr"], up["snr_infinite"], up["n_signal"], up["selected"]) == (None, True, 1, True)
    gate = rows["model.layers.0.mlp.gate_proj"]
    assert (gate["snr"], gate["snr_infinite"]) == (0.0, False)
    finite = [r for name, r in rows.items() if name != up["name"]]
    assert all(r["snr_infinite"] is False and r["snr"] >= 0 for r in finite)
    assert "inf" in capsys.readouterr().out   # the table still says it plainly


def test_merge_refuses_a_plain_peft_prefix_folder(tiny_model_dir, tmp_path, capsys):
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "prefix-adapter"   # saved by peft alone: no tunesmith.json
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                           PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    assert cli("merge", "--adapter", folder, "-o", tmp_path / "merged") == 2
    err = capsys.readouterr().err
    assert "'prefix' adapter cannot be folded into the base weights" in err and "Traceback" not in err
    assert not (tmp_path / "merged").exists()
