"""Frozen base weights cast once to the autocast dtype: the same math as autocast, fp32 restored after."""

from __future__ import annotations

import pytest
import torch

from tunesmith.methods import method_options, prepare_method
from tunesmith.train.precision import frozen_linears_in


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_bf16_frozen_base_equals_autocast_and_is_restored(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = prepare_method(model, method_options(name="lora", r=4, alpha=8), 1e-3).model
    # Non-zero B so the LoRA path contributes to the output and to every gradient.
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(0, 1000, (2, 24))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    ref_loss, ref_grads = _loss_and_grads(model, ids)
    with frozen_linears_in(model, torch.bfloat16):
        cast = [n for n, p in model.named_parameters() if p.dtype == torch.bfloat16]
        loss, grads = _loss_and_grads(model, ids)

    assert len(cast) >= 2 * 7, cast  # every frozen projection of both layers
    assert not any("lora_" in n or "embed" in n or "norm" in n for n in cast)
    assert torch.equal(loss, ref_loss)
    for name, g in ref_grads.items():
        assert torch.allclose(grads[name], g, rtol=0, atol=1e-6), name
    for name, p in model.named_parameters():
        assert p.dtype == before[name].dtype and torch.equal(p.detach(), before[name]), name


def test_no_autocast_dtype_changes_nothing(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    for p in model.parameters():
        p.requires_grad_(False)
    with frozen_linears_in(model, None):
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_trainable_weights_are_never_cast(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))  # full fine-tune: everything trains
    with frozen_linears_in(model, torch.bfloat16):
        assert all(p.dtype == torch.float32 for p in model.parameters())


def _alive_with_data_at(ptr: int) -> bool:
    import gc

    def data_ptr(tensor) -> int | None:
        try:
            return tensor.data_ptr()
        except Exception:    # tensors with no storage (fake or meta ones other tests in this process left)
            return None

    gc.collect()
    return any(isinstance(o, torch.Tensor) and data_ptr(o) == ptr for o in gc.get_objects())


@pytest.mark.parametrize("restore", [True, False])
def test_without_restore_the_cast_stays_and_no_fp32_copy_is_kept(tiny_model_dir, restore):
    """restore=False (the serving engine's private fallback copies, whose block stays open while they are
    loaded): no fp32 copy of a cast weight is kept inside the block, and the cast stays after it, the head
    untied in bf16 while the embedding lookup keeps fp32. restore=True keeps them, to give them back."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    for p in model.parameters():
        p.requires_grad_(False)
    proj = model.model.layers[0].mlp.down_proj
    ptr = proj.weight.data_ptr()
    with frozen_linears_in(model, torch.bfloat16, restore=restore):
        assert proj.weight.dtype == torch.bfloat16
        assert _alive_with_data_at(ptr) == restore
    assert proj.weight.dtype == (torch.float32 if restore else torch.bfloat16)
    assert model.lm_head.weight.dtype == (torch.float32 if restore else torch.bfloat16)
    assert model.get_input_embeddings().weight.dtype == torch.float32
