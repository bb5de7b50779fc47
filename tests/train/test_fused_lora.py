"""Plain LoRA layers through one autograd function: peft's numbers, and peft's forward where it must."""

from __future__ import annotations

import contextlib

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from tunesmith.models import packed_linear
from tunesmith.train.fused_lora import LoRALinearFunction, fused_lora
from tunesmith.train.loss import causal_lm_nll
from tunesmith.train.precision import frozen_linears_in


def _lora_model(tiny_model_dir, **lora):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    config = dict(r=4, lora_alpha=12, target_modules="all-linear", lora_dropout=0.0) | lora
    model = get_peft_model(model, LoraConfig(**config))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B: the adapter reaches the output and every gradient
            torch.nn.init.normal_(p, std=0.1)
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (2, 24), generator=g)
    targets = ids.clone()
    targets[:, :8] = -100
    return ids, torch.arange(24).expand(2, 24), targets


def _loss_and_grads(model, dtype=None, fused=False):
    ids, pos, targets = _batch()
    model.zero_grad(set_to_none=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(frozen_linears_in(model, dtype))
        patched = stack.enter_context(fused_lora(model)) if fused else None
        with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
            total, n = causal_lm_nll(model, ids, pos, targets)
        (total / n).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    return total.detach(), grads, patched


def test_fp32_loss_and_gradients_equal_peft(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    ref_loss, ref_grads, _ = _loss_and_grads(model)
    loss, grads, patched = _loss_and_grads(model, fused=True)
    assert patched == 2 * 7  # every projection of both layers
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
    assert ((grads - ref_grads).norm() / ref_grads.norm()).item() < 1e-5


@pytest.mark.skipif(not packed_linear._ops_available(), reason="this torch has no oneDNN packed linear")
def test_fp32_with_the_frozen_base_packed_equals_peft(tiny_model_dir, monkeypatch):
    """AMD CPUs: the base products forward and backward through packed copies of W and W^T, peft's numbers."""
    monkeypatch.setattr(packed_linear, "fp32_packing_pays", lambda: True)
    used = []
    real = packed_linear.packed_matmul
    monkeypatch.setattr(packed_linear, "packed_matmul", lambda x, *rest: used.append(x.shape) or real(x, *rest))
    model = _lora_model(tiny_model_dir)
    ref_loss, ref_grads, _ = _loss_and_grads(model)
    assert used == []
    loss, grads, patched = _loss_and_grads(model, fused=True)
    # Every layer's forward, and the backward of every layer whose input needs a gradient.
    assert patched == 14 and len(used) > patched
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
    assert ((grads - ref_grads).norm() / ref_grads.norm()).item() < 1e-5
    assert packed_linear._training_pairs == {}


@pytest.mark.skipif(not packed_linear._ops_available(), reason="this torch has no oneDNN packed linear")
def test_with_the_base_packed_adapters_off_equal_a_fresh_adapter_bit_for_bit(tiny_model_dir, monkeypatch):
    """DPO's step 0: the reference (adapters off) and a fresh policy (B = 0) must agree exactly, so the adapter-off
    pass multiplies by the same packed copies, gradient included."""
    from tunesmith.models.adapters import adapters_off

    monkeypatch.setattr(packed_linear, "fp32_packing_pays", lambda: True)
    used = []
    real = packed_linear.packed_matmul
    monkeypatch.setattr(packed_linear, "packed_matmul", lambda x, *rest: used.append(x.shape) or real(x, *rest))
    model = _lora_model(tiny_model_dir)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.zeros_(p)
    ids, _, _ = _batch()
    with fused_lora(model) as patched:
        policy = model(ids).logits
        calls = len(used)
        embeddings = model.get_input_embeddings()
        with adapters_off(model):
            hidden = embeddings(ids).detach().requires_grad_()
            reference = model(inputs_embeds=hidden).logits
        reference.sum().backward()
    assert calls == patched == 14 and len(used) >= calls + patched + 1   # forward both ways, and a backward
    assert torch.equal(policy, reference)
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    with adapters_off(model):
        plain = model(ids).logits
    assert (plain - reference).abs().max() <= 1e-5 * plain.abs().max()


def test_only_frozen_fp32_weights_unchanged_since_packing_are_used_packed(monkeypatch):
    monkeypatch.setattr(packed_linear, "fp32_packing_pays", lambda: True)
    frozen, trained, half = torch.randn(8, 6), torch.randn(8, 6, requires_grad=True), torch.randn(8, 6).bfloat16()
    with packed_linear.packed_for_training([frozen, trained, half]) as packed:
        assert packed == (1 if packed_linear._ops_available() else 0)
        if packed:
            w, wt = packed_linear.training_pair(frozen)
            x, g = torch.randn(3, 6), torch.randn(3, 8)
            assert torch.allclose(packed_linear.packed_matmul(x, w), x @ frozen.t(), atol=1e-5)      # x W^T
            assert torch.allclose(packed_linear.packed_matmul(g, wt), g @ frozen, atol=1e-5)         # g W
        assert packed_linear.training_pair(trained) is None and packed_linear.training_pair(half) is None
        frozen.add_(1.0)                     # updated in place (Delta-LoRA moves its base): the copies are stale
        assert packed_linear.training_pair(frozen) is None
    assert packed_linear.training_pair(frozen) is None
    monkeypatch.setattr(packed_linear, "fp32_packing_pays", lambda: False)
    with packed_linear.packed_for_training([torch.randn(8, 6)]) as packed:
        assert packed == 0


def test_bf16_is_as_close_to_fp32_as_peft_under_autocast(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    _, exact, _ = _loss_and_grads(model)
    _, peft_bf16, _ = _loss_and_grads(model, torch.bfloat16)
    _, fused_bf16, _ = _loss_and_grads(model, torch.bfloat16, fused=True)
    peft_err = ((peft_bf16 - exact).norm() / exact.norm()).item()
    fused_err = ((fused_bf16 - exact).norm() / exact.norm()).item()
    assert 0 < peft_err < 0.05
    assert fused_err < 1.5 * peft_err, (fused_err, peft_err)


def test_the_function_with_a_bias_and_without_an_input_gradient():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    a, b = torch.randn(3, 6, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    x = torch.randn(2, 4, 6, dtype=torch.float64).float().requires_grad_()
    y = LoRALinearFunction.apply(x, base.weight.detach(), base.bias.detach(), a, b, 0.5, torch.float32)
    ref = base(x).detach() + (x @ a.t() @ b.t()) * 0.5
    assert y.shape == (2, 4, 5) and torch.allclose(y, ref, atol=1e-6)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, a, b), g)
    want = torch.autograd.grad(ref, (x, a, b), g, allow_unused=True)
    # ref's base term is detached, so its x-gradient is only the LoRA term: add the base's.
    want = (want[0] + g @ base.weight.detach(), want[1], want[2])
    for got_t, want_t in zip(got, want):
        assert torch.allclose(got_t, want_t, atol=1e-5)
    y = LoRALinearFunction.apply(x.detach(), base.weight.detach(), None, a, b, 0.5, torch.float32)
    ga, gb = torch.autograd.grad(y, (a, b), g)
    assert ga.dtype == gb.dtype == torch.float32


@pytest.mark.parametrize("state", ["disabled", "dropout", "dora", "lora bias", "two adapters"])
def test_layers_in_other_states_keep_peft_forward(tiny_model_dir, state):
    lora = {"dropout": {"lora_dropout": 0.3}, "dora": {"use_dora": True}, "lora bias": {"lora_bias": True}}.get(state, {})
    model = _lora_model(tiny_model_dir, **lora)
    if state == "lora bias":
        for name, p in model.named_parameters():
            if "lora_B" in name and name.endswith("bias"):
                torch.nn.init.normal_(p, std=0.1)
    if state == "two adapters":
        model.add_adapter("second", LoraConfig(r=2, target_modules="all-linear"))
        model.base_model.set_adapter(["default", "second"])
    ids, pos, targets = _batch()
    model.eval()  # dropout's mask would differ between the two calls

    def logits():
        ctx = model.disable_adapter() if state == "disabled" else contextlib.nullcontext()
        with ctx, torch.no_grad():
            return model(input_ids=ids).logits

    ref = logits()
    with fused_lora(model) as patched:
        got = logits()
    assert torch.equal(got, ref)
    assert patched == 2 * 7  # patched, and each call falls back to peft


def test_forward_is_peft_again_after_the_block(tiny_model_dir):
    from peft.tuners.lora import Linear as LoraLinear

    model = _lora_model(tiny_model_dir)
    layers = [m for m in model.modules() if type(m) is LoraLinear]
    with fused_lora(model):
        assert all("forward" in m.__dict__ for m in layers)
    assert not any("forward" in m.__dict__ or "_peft_forward" in m.__dict__ for m in layers)


def test_a_tied_head_is_untied_into_a_cast_copy_inside_frozen_linears_in(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    assert head.weight is embedding
    ids, pos, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        ref = model(input_ids=ids).logits
    with frozen_linears_in(model, torch.bfloat16):
        assert head.weight is not embedding and head.weight.dtype == torch.bfloat16
        assert torch.equal(head.weight, embedding.detach().to(torch.bfloat16))
        assert model.get_input_embeddings().weight is embedding and embedding.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            got = model(input_ids=ids).logits
    assert torch.equal(got, ref)   # autocast rounds the weights to the same values
    assert head.weight is embedding   # tied again after the block
