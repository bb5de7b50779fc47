"""One matrix over every method (and the optimizer / quantization combinations) on the tiny Llama.

Each case: the trainable-parameter count equals that method's closed-form formula (computed from
the base model's layer shapes, not from the method's code); the loss on a memorisable set falls
by at least 30 % in 30 steps; the saved folder reloads onto a fresh base with the same logits;
and a mergeable adapter merged into the fp32 base gives the unmerged logits to 1e-4.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tunesmith.config import DataConfig, TrainConfig
from tunesmith.data.load import load_samples
from tunesmith.data.tokenize import tokenize_all
from tunesmith.methods import MethodOptions, get_method, load_trained, method_options, prepare_method
from tunesmith.methods.targets import decoder_linears
from tunesmith.models import load_model

R = 4
FF = {"down_proj"}


def shapes(base):
    """[(short name, in, out)] of the decoder-block linear layers."""
    return [(n.rsplit(".", 1)[-1], m.in_features, m.out_features) for n, m in decoder_linears(base)]


def lora(base, cfg):
    return sum(cfg.r * (i + o) for _, i, o in shapes(base))


def kv_dim(c):
    return c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)


FORMULAS = {
    "full": lambda b, cfg: sum(p.numel() for p in b.parameters()),
    "freeze": lambda b, cfg: sum(p.numel() for p in b.model.layers[-cfg.layers_to_train:].parameters()),
    "lora": lora, "rslora": lora, "qlora": lora, "delta_lora": lora,
    "dora": lambda b, cfg: lora(b, cfg) + sum(o for _, i, o in shapes(b)),
    "lora_fa": lambda b, cfg: sum(cfg.r * o for _, i, o in shapes(b)),          # A frozen: B only
    "vera": lambda b, cfg: sum(o + cfg.vera_r for _, i, o in shapes(b)),         # lambda_b (out) + lambda_d (r)
    "ia3": lambda b, cfg: sum(i if n in FF else o for n, i, o in shapes(b)),
    "prefix": lambda b, cfg: cfg.num_virtual_tokens * b.config.num_hidden_layers * 2 * kv_dim(b.config),
    "prompt": lambda b, cfg: cfg.num_virtual_tokens * b.config.hidden_size,
    # per block: down (H*s + s) + up (s*H + H), after attention and after MLP
    "bottleneck": lambda b, cfg: b.config.num_hidden_layers * 2 * (2 * b.config.hidden_size * cfg.bottleneck_size
                                                                    + cfg.bottleneck_size + b.config.hidden_size),
    # top ceil(p * L) matrices of each type, each in*out (no biases in Llama)
    "spectrum": lambda b, cfg: sum(math.ceil(b.config.num_hidden_layers * cfg.spectrum_top_percent / 100) * i * o
                                   for i, o in {n: (i, o) for n, i, o in shapes(b)}.values()),
}

# id: (formula, method keys, learning rate)
CASES = {
    "full": ("full", {}, 3e-3),
    "freeze": ("freeze", {"layers_to_train": 1}, 1e-2),
    "lora": ("lora", {}, 1e-2),
    "rslora": ("rslora", {}, 1e-2),
    "dora": ("dora", {}, 1e-2),
    "qlora": ("qlora", {}, 1e-2),
    "qlora+dora": ("dora", {"name": "qlora", "dora": True}, 1e-2),
    "lora+loraplus": ("lora", {"name": "lora", "loraplus_lr_ratio": 4.0}, 5e-3),
    "lora+lora_fa": ("lora_fa", {"name": "lora", "lora_fa": True}, 1e-2),
    "delta_lora": ("delta_lora", {"delta_lora_lambda": 0.5}, 1e-2),
    "vera": ("vera", {"vera_r": 64}, 5e-2),
    "ia3": ("ia3", {}, 5e-2),
    "prefix": ("prefix", {"num_virtual_tokens": 8}, 1e-1),
    "prompt": ("prompt", {"num_virtual_tokens": 8, "prompt_init_text": "Answer with the item code."}, 3e-2),
    "bottleneck": ("bottleneck", {"bottleneck_size": 16}, 1e-2),
    "spectrum": ("spectrum", {"spectrum_top_percent": 50}, 3e-3),
}


def method_cfg(case_id: str) -> MethodOptions:
    formula, keys, _ = CASES[case_id]
    keys = {"name": case_id, **keys}
    return method_options(r=R, alpha=2 * R, dropout=0.0, **keys)


@pytest.fixture(scope="module")
def memo_set(tokenizer, tmp_path_factory):
    import json

    rows = [{"messages": [{"role": "user", "content": f"Code for item {i}?"},
                          {"role": "assistant", "content": f"ITEM-{i:03d}-{'ABCDEFGH'[i % 8]}"}]} for i in range(16)]
    path = tmp_path_factory.mktemp("memo") / "memo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_set, _ = tokenize_all(tokenizer, load_samples(str(path)), max_len=64, overlong="drop")
    return train_set


def load_base(model_dir, cfg):
    return load_model(str(model_dir), dtype="fp32", **get_method(cfg.name).load_options(cfg))


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        # Prompt tuning returns logits for its virtual tokens too; the real tokens come last.
        return model(input_ids=ids).logits.float()[:, -ids.shape[1]:]


def test_every_registered_method_is_in_the_matrix():
    from tunesmith.methods import METHODS

    covered = {method_cfg(case_id).name for case_id in CASES}
    assert set(METHODS) <= covered, f"add a CASES row (and a FORMULAS entry) for {sorted(set(METHODS) - covered)}"
    assert all(formula in FORMULAS for formula, _, _ in CASES.values())


@pytest.mark.parametrize("case_id", list(CASES))
def test_method_matrix(case_id, tiny_model_dir, tokenizer, memo_set, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunesmith.train.trainer import Trainer

    formula, _, lr = CASES[case_id]
    cfg = method_cfg(case_id)
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))

    torch.manual_seed(0)
    prepared = prepare_method(load_base(tiny_model_dir, cfg), cfg, lr)
    assert prepared.trainable_parameters() == FORMULAS[formula](reference, cfg)

    train_cfg = TrainConfig(max_steps=30, batch_size=16, lr=lr, scheduler="constant", warmup_ratio=0.0,
                            precision="fp32", seed=0)
    data_cfg = DataConfig(max_len=64, packing=True)
    result = Trainer(train_cfg, data_cfg, prepared, tokenizer, memo_set, [], tmp_path / "run").fit()
    # Each step sees the whole set, so first and last losses are comparable.
    assert result.final_loss <= 0.7 * result.first_loss, (result.first_loss, result.final_loss)

    ids = torch.randint(0, 2000, (2, 13), generator=torch.Generator().manual_seed(1))
    trained = logits(prepared.model, ids)
    assert (trained - logits(reference, ids)).abs().max() > 1e-3   # training really changed the model
    if prepared.kind == "full":
        reloaded = AutoModelForCausalLM.from_pretrained(str(result.output_dir))
        # full / freeze / spectrum save the very fp32 tensors they trained: the reload is exact.
        # delta_lora's folder is its merge (W + (alpha/r) B A in one matrix, where training ran W x
        # plus the adapter's x A^T B^T separately): equal up to fp32 rounding, hence 1e-4.
        atol = 1e-4 if cfg.name == "delta_lora" else 1e-6
        torch.testing.assert_close(logits(reloaded, ids), trained, atol=atol, rtol=0)
        return
    reloaded = load_trained(load_base(tiny_model_dir, cfg), result.output_dir)
    torch.testing.assert_close(logits(reloaded, ids), trained, atol=1e-6, rtol=0)
    if get_method(cfg.name).mergeable:
        # Merging happens on the fp32 base (a 4-bit base cannot hold the sum), as `tunesmith merge` does.
        unmerged = load_trained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), result.output_dir)
        before = logits(unmerged, ids)
        merged = copy.deepcopy(unmerged).merge_and_unload()
        torch.testing.assert_close(logits(merged, ids), before, atol=1e-4, rtol=0)
        if cfg.name != "qlora":
            torch.testing.assert_close(before, trained, atol=1e-5, rtol=0)
