"""Pre-packed linear weights (models/packed_linear.py). bf16: the same outputs, bit for bit, as the products
autocast runs (on one thread: with more, oneDNN may split a product's work differently once its weight is
packed, a bf16 rounding difference). fp32 (AMD CPUs): the same logits to rounding and the same greedy
tokens. Either way the model as it was after the block."""

from __future__ import annotations

import pytest
import torch

from tunesmith.models import packed_linear
from tunesmith.models.packed_linear import packed_linears, packing_available
from tunesmith.train.precision import frozen_linears_in, inference_precision

needs_bf16 = pytest.mark.skipif(not packing_available(), reason="this CPU's oneDNN has no native bf16 (AVX2 only): nothing is packed")
needs_ops = pytest.mark.skipif(not packed_linear._ops_available(), reason="this torch has no oneDNN packed linear")


@pytest.fixture
def model(tiny_model_dir):
    from tunesmith.models import load_model

    m = load_model(str(tiny_model_dir), dtype="fp32")
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def linears(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def counted(monkeypatch):
    """The input shape of every call of a packed linear's forward, a lone one or a sibling."""
    calls = []
    for name in ("_packed_forward", "_sibling_forward"):
        def spy(owner, index_or_packed, x, real=getattr(packed_linear, name)):
            calls.append(tuple(x.shape))
            return real(owner, index_or_packed, x)

        monkeypatch.setattr(packed_linear, name, spy)
    return calls


@needs_bf16
def test_bf16_passes_use_packed_weights_and_give_the_same_logits(model, counted):
    ids = torch.randint(5, 1000, (3, 17))
    with torch.no_grad(), frozen_linears_in(model, torch.bfloat16), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not any("forward" in m.__dict__ for m in linears(model))
        reference = model(ids).logits
    assert counted == []
    with torch.no_grad(), inference_precision(model, "bf16"):
        assert all("forward" in m.__dict__ for m in linears(model))     # every frozen linear, the untied head too
        packed = model(ids).logits
    assert len(counted) == len(linears(model))
    assert torch.equal(packed, reference)
    # Afterwards: plain modules, fp32 weights, the head tied again.
    assert not any("forward" in m.__dict__ for m in linears(model))
    assert all(m.weight.dtype == torch.float32 for m in linears(model))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@needs_bf16
def test_generation_in_bf16_is_token_for_token_the_same(model, tokenizer, counted, monkeypatch):
    from tunesmith.generation.offline import generate_tokens

    convs = [[{"role": "user", "content": f"Say something about the number {i}."}] for i in range(5)]
    packed = generate_tokens(model, tokenizer, convs, max_new_tokens=12, batch_size=3, precision="bf16")
    assert counted, "the packed products were not used"
    monkeypatch.setattr(packed_linear, "packing_available", lambda: False)
    plain = generate_tokens(model, tokenizer, convs, max_new_tokens=12, batch_size=3, precision="bf16")
    assert packed == plain
    assert sum(map(len, packed)) > 30


@needs_bf16
def test_weights_loaded_in_bf16_are_packed_without_autocast(tiny_model_dir, counted):
    from tunesmith.models import load_model

    model = load_model(str(tiny_model_dir), dtype="bf16").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(5, 1000, (2, 9))
    with torch.no_grad():
        reference = model(ids).logits
        with inference_precision(model, "fp32"):     # serve --dtype bf16: the weights are bf16, no autocast
            packed = model(ids).logits
    assert counted and torch.equal(packed, reference)


@needs_bf16
def test_what_cannot_take_the_packed_product_falls_back(model, counted):
    layer = linears(model)[0]
    with frozen_linears_in(model, torch.bfloat16), packed_linears(model):
        x = torch.randn(4, layer.in_features, dtype=torch.bfloat16, requires_grad=True)
        y = layer(x)                                 # a gradient is wanted: the plain product, differentiable
        y.sum().backward()
        assert x.grad is not None and torch.equal(y, torch.nn.functional.linear(x, layer.weight))
        with pytest.raises(RuntimeError):            # fp32 input, no autocast: F.linear's own dtype error
            layer(torch.randn(2, layer.in_features))
        with packed_linears(model):                  # nested: not packed twice, the outer packing kept
            pass
        assert "forward" in layer.__dict__
    assert "forward" not in layer.__dict__


@needs_bf16
def test_nothing_is_packed_when_it_would_not_fit_in_memory(model, counted, monkeypatch):
    monkeypatch.setattr(packed_linear, "MEMORY_SHARE", 0.0)
    with torch.no_grad(), inference_precision(model, "bf16"):
        assert not any("forward" in m.__dict__ for m in linears(model))
        model(torch.randint(5, 1000, (1, 5)))
    assert counted == []


@needs_bf16
@pytest.mark.parametrize("rows", [["a", None, "b", "a"], ["b", "b"]], ids=["mixed", "one-adapter"])
def test_lora_bank_stacks_packed_give_the_same_logits(model, rows, monkeypatch):
    """The serving engine's per-row LoRA (generation/lora_batch.py) in bf16: its rank-r products packed too."""
    import types

    import tunesmith.generation.lora_batch as lora_batch
    from tunesmith.generation.lora_batch import LoRABank

    bank = LoRABank(model, dtype=torch.bfloat16)
    torch.manual_seed(0)
    shapes = {name: (model.get_submodule(name).in_features, model.get_submodule(name).out_features)
              for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")}
    for name, rank in (("a", 4), ("b", 8)):
        bank.add(name, {m: (torch.randn(i, rank) * 0.3, torch.randn(rank, o) * 0.3) for m, (i, o) in shapes.items()}, rank)
    ids = torch.randint(5, 1000, (len(rows), 11))
    wrapped = bank.layers["model.layers.0.self_attn.q_proj"]

    def logits():
        bank.set_rows([0 if r is None else bank.slot_of[r] for r in rows])
        with torch.no_grad(), inference_precision(model, "bf16"):
            out = model(ids).logits
        bank.clear_rows()
        return out

    packed = logits()
    assert wrapped._packs is not None
    monkeypatch.setattr(lora_batch, "packed_linear", types.SimpleNamespace(packing_available=lambda: False))
    plain = logits()
    assert torch.equal(packed, plain)
    bank.set_rows([0] * len(rows))
    with torch.no_grad():
        base = model(ids).logits
    assert (packed.float() - base).abs().max() > 0.1      # the adapters do change these rows


@needs_bf16
def test_decide_measures_requests_with_the_weights_packed_once(model, tokenizer, monkeypatch):
    """`decide` times requests one at a time: the weights are cast and packed once for all of them (as a server
    holds them), not by each request's generate call."""
    from tunesmith.decide.measure import measure_requests

    packs = []
    real = packed_linear.pack
    monkeypatch.setattr(packed_linear, "pack", lambda w: packs.append(w.shape) or real(w))
    convs = [[{"role": "user", "content": f"Count to {i}."}] for i in range(3)]
    out = measure_requests(model, tokenizer, convs, max_new_tokens=4, precision="bf16")
    assert out["requests"] == 3 and out["completion_tokens_per_request"] > 0
    # Once each, not once per request (4 calls with the warm-up); q/k/v and gate/up as one copy per group.
    assert len(packs) == len(linears(model)) - 3 * model.config.num_hidden_layers
    assert all(m.weight.dtype == torch.float32 and "forward" not in m.__dict__ for m in linears(model))


@pytest.fixture
def fp32_packing(monkeypatch):
    """fp32 weights packed whatever this CPU's maker (oneDNN's fp32 product runs on any x86 CPU)."""
    monkeypatch.setattr(packed_linear, "fp32_packing_pays", lambda: True)


@needs_ops
def test_fp32_passes_packed_give_the_logits_to_rounding(model, counted, fp32_packing):
    ids = torch.randint(5, 1000, (3, 17))
    with torch.no_grad():
        reference = model(ids).logits
        with inference_precision(model, "fp32"):
            assert all(packed_linear.is_packed(m) for m in linears(model))      # the tied head too
            packed = model(ids).logits
    assert len(counted) == len(linears(model))
    assert (packed - reference).abs().max() <= 1e-5 * reference.abs().max()
    assert not any("forward" in m.__dict__ or packed_linear.is_packed(m) for m in linears(model))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@needs_ops
def test_generation_in_fp32_packed_is_token_for_token_the_same(model, tokenizer, counted, fp32_packing, monkeypatch):
    import tunesmith.generation.vocab_head as vocab_head
    from tunesmith.generation.offline import generate_tokens

    sliced = []
    real_project = vocab_head.project
    monkeypatch.setattr(vocab_head, "project", lambda head, x: sliced.append(x.shape) or real_project(head, x))
    convs = [[{"role": "user", "content": f"Say something about the number {i}."}] for i in range(5)]
    packed = generate_tokens(model, tokenizer, convs, max_new_tokens=12, batch_size=3)
    assert counted and not sliced           # the packed head projects, not vocab_head's MKL slices
    monkeypatch.setattr(packed_linear, "fp32_packing_pays", lambda: False)
    plain = generate_tokens(model, tokenizer, convs, max_new_tokens=12, batch_size=3)
    assert sliced, "the unpacked run projects in vocabulary slices"
    assert packed == plain
    assert sum(map(len, packed)) > 30


@needs_ops
def test_fp32_products_that_cannot_be_packed_fall_back(model, fp32_packing):
    layer = linears(model)[0]
    with packed_linears(model):
        x = torch.randn(4, layer.in_features, requires_grad=True)
        y = layer(x)                                  # a gradient is wanted: the plain product, differentiable
        assert y.requires_grad
        y.sum().backward()
        assert x.grad is not None and torch.equal(y, torch.nn.functional.linear(x, layer.weight))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16   # autocast's bf16 product, as F.linear gives it
        assert packed_linear.is_packed(layer)


def test_fp32_is_packed_on_amd_and_hygon_cpus_only(monkeypatch):
    try:
        for vendor, expected in (("AuthenticAMD", True), ("HygonGenuine", True), ("GenuineIntel", False), ("", False)):
            monkeypatch.setattr(packed_linear, "cpu_vendor", lambda v=vendor: v)
            packed_linear.fp32_packing_pays.cache_clear()
            assert packed_linear.fp32_packing_pays() is (expected and packed_linear._ops_available())
            assert packed_linear.packs(torch.float32) is packed_linear.fp32_packing_pays()
    finally:
        packed_linear.fp32_packing_pays.cache_clear()
    assert not packed_linear.packs(torch.float16)


def _unfused(monkeypatch):
    monkeypatch.setattr(packed_linear, "SIBLINGS", ())


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("rows", [1, 16])
def test_siblings_run_as_one_product_with_the_same_logits(model, precision, rows, monkeypatch):
    """q/k/v and gate/up: one packed product per group per layer, every logit bit for bit what the separate
    packed products give."""
    if precision == "bf16" and not packing_available():
        pytest.skip("this CPU's oneDNN has no native bf16 (AVX2 only): nothing is packed")
    if precision == "fp32":
        if not packed_linear._ops_available():
            pytest.skip("this torch has no oneDNN packed linear")
        monkeypatch.setattr(packed_linear, "fp32_packing_pays", lambda: True)
    products = []
    real = packed_linear.packed_matmul
    monkeypatch.setattr(packed_linear, "packed_matmul", lambda x, p, b=None: products.append(p.shape) or real(x, p, b))
    ids = torch.randint(5, 1000, (rows, 7))

    def logits():
        products.clear()
        with torch.no_grad(), inference_precision(model, precision):
            return model(ids).logits

    fused = logits()
    layers = model.config.num_hidden_layers
    assert len(products) == 4 * layers + 1                 # (q k v), o, (gate up), down; the head
    cfg = model.config
    width = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * (cfg.hidden_size // cfg.num_attention_heads)
    assert products.count(torch.Size([width, cfg.hidden_size])) == layers
    _unfused(monkeypatch)
    separate = logits()
    assert len(products) == 7 * layers + 1
    assert torch.equal(fused, separate)


@needs_ops
def test_a_sibling_called_on_its_own_input_gets_its_own_product(model, fp32_packing):
    attn = model.model.layers[0].self_attn
    x, other = torch.randn(2, 3, attn.q_proj.in_features), torch.randn(2, 3, attn.q_proj.in_features)
    want = {n: getattr(attn, n)(x) for n in ("q_proj", "k_proj", "v_proj")}
    with torch.no_grad(), packed_linears(model):
        assert torch.allclose(attn.q_proj(x), want["q_proj"], atol=1e-5)
        assert torch.allclose(attn.k_proj(other), torch.nn.functional.linear(other, attn.k_proj.weight), atol=1e-5)
        assert torch.allclose(attn.k_proj(x), want["k_proj"], atol=1e-5)   # x again: q's product is not reused
        x.add_(1.0)                                                          # changed in place since q read it
        assert torch.allclose(attn.v_proj(x), torch.nn.functional.linear(x, attn.v_proj.weight), atol=1e-5)
        assert attn.v_proj(x).shape == (2, 3, attn.v_proj.out_features)


@needs_ops
def test_siblings_inside_peft_lora_layers_are_fused_too(model, fp32_packing, monkeypatch):
    """A LoRA model's q/k/v are peft layers around the frozen linears: those are packed side by side, and the
    adapter's logits are what the separate products give (to rounding: fp32)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False))
    lora.eval()
    groups = packed_linear._sibling_groups(lora, [m for m in lora.modules() if type(m) is torch.nn.Linear])
    assert len(groups) == 2 * model.config.num_hidden_layers
    ids = torch.randint(5, 1000, (2, 9))

    def logits():
        with torch.no_grad(), inference_precision(lora, "fp32"):
            return lora(ids).logits

    fused = logits()
    _unfused(monkeypatch)
    assert torch.equal(fused, logits())
    with torch.no_grad(), lora.disable_adapter():
        base = lora(ids).logits
    assert (fused - base).abs().max() > 1e-3                # the adapters do act on the fused siblings' outputs
