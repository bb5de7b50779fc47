"""Method-specific checks: Delta-LoRA's base-weight updates, Spectrum's SNR, bottleneck identity
at init, LoRA+ / LoRA-FA optimizers, prompt init from text, and the memory estimate."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tunesmith.config import DataConfig, TrainConfig
from tunesmith.data.load import load_samples
from tunesmith.data.tokenize import tokenize_all
from tunesmith.methods import method_options, prepare_method
from tunesmith.methods.snr import matrix_snr, mp_median
from tunesmith.models import adapters_off


@pytest.fixture(scope="module")
def memo_set(tokenizer, tmp_path_factory):
    rows = [{"messages": [{"role": "user", "content": f"Code for item {i}?"},
                          {"role": "assistant", "content": f"ITEM-{i:03d}"}]} for i in range(8)]
    path = tmp_path_factory.mktemp("memo") / "memo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tokenize_all(tokenizer, load_samples(str(path)), max_len=64)[0]


def fresh(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))


def train(prepared, tokenizer, data, tmp_path, steps=6, lr=1e-2):
    from tunesmith.train.trainer import Trainer

    cfg = TrainConfig(max_steps=steps, batch_size=8, lr=lr, scheduler="constant", warmup_ratio=0.0, precision="fp32")
    return Trainer(cfg, DataConfig(max_len=64), prepared, tokenizer, data, [], tmp_path).fit()


# --- Delta-LoRA ---------------------------------------------------------------------------------

@pytest.mark.parametrize("start", [0, 3])
def test_delta_lora_moves_base_weights_by_exactly_the_product_deltas(start, tiny_model_dir, tokenizer, memo_set, tmp_path):
    lam = 0.7
    torch.manual_seed(0)
    prepared = prepare_method(fresh(tiny_model_dir), method_options(name="delta_lora", r=4, alpha=8, dropout=0.0,
                                                                  delta_lora_lambda=lam, delta_lora_start=start), 1e-2)
    state = prepared.delta_lora
    w0 = {n: m.weight.detach().double().clone() for n, m in state.modules}
    expected = {n: torch.zeros_like(w) for n, w in w0.items()}
    products = []

    def product(m):   # (alpha / r) * B @ A, in float64, independent of the method's own code
        return (8 / 4) * m.delta_lora_B.detach().double() @ m.delta_lora_A.detach().double()

    before = {n: product(m) for n, m in state.modules}
    original = state.after_step

    def recording_after_step():
        nonlocal before
        step = len(products) + 1
        after = {n: product(m) for n, m in state.modules}
        if step > start:
            for n in expected:
                expected[n] += lam * (after[n] - before[n])
        products.append(after)
        before = after
        original()

    prepared.hooks.after_step = recording_after_step
    train(prepared, tokenizer, memo_set, tmp_path, steps=6)
    assert len(products) == 6
    for n, m in state.modules:
        moved = m.weight.detach().double() - w0[n]
        assert expected[n].abs().max() > 1e-4            # the base really moved
        torch.testing.assert_close(moved, expected[n], atol=2e-7, rtol=0)
        # The deltas telescope: W_T - W_0 = lambda * (P_T - P_start).
        p_start = products[start - 1][n] if start else torch.zeros_like(moved)
        torch.testing.assert_close(moved, lam * (products[-1][n] - p_start), atol=2e-7, rtol=0)
        assert not m.weight.requires_grad


def test_delta_lora_checkpoint_state_restores_moved_weights(tiny_model_dir, tokenizer, memo_set, tmp_path):
    torch.manual_seed(0)
    prepared = prepare_method(fresh(tiny_model_dir), method_options(name="delta_lora", r=4, dropout=0.0), 1e-2)
    train(prepared, tokenizer, memo_set, tmp_path, steps=3)
    state = prepared.delta_lora
    saved = {k: v.clone() for k, v in state.extra_state().items()}
    name, module = state.modules[0]
    with torch.no_grad():
        module.weight.add_(1.0)
    state.load_extra_state(saved)
    assert torch.equal(module.weight, saved[f"{name}.weight"]) and state.step == 3


def test_delta_lora_resume_from_checkpoint_is_exact(tiny_model_dir, tokenizer, memo_set, tmp_path):
    from tunesmith.train.trainer import Trainer

    def prepared():
        torch.manual_seed(0)
        return prepare_method(fresh(tiny_model_dir), method_options(name="delta_lora", r=4, alpha=8, dropout=0.0), 1e-2)

    def fit(p, run, steps, resume=False):
        cfg = TrainConfig(max_steps=steps, batch_size=4, lr=1e-2, scheduler="constant", warmup_ratio=0.0,
                          precision="fp32", save_every=3)
        Trainer(cfg, DataConfig(max_len=64), p, tokenizer, memo_set, [], run).fit(resume=resume)

    straight = prepared()
    fit(straight, tmp_path / "straight", 6)
    fit(prepared(), tmp_path / "split", 3)              # "killed" after the step-3 checkpoint
    resumed = prepared()
    fit(resumed, tmp_path / "split", 6, resume=True)
    for (name, a), (_, b) in zip(straight.delta_lora.modules, resumed.delta_lora.modules):
        assert torch.equal(a.weight, b.weight), name      # the moved base weights came back from extra_state
        assert torch.equal(a.delta_lora_B, b.delta_lora_B), name


# --- Spectrum -----------------------------------------------------------------------------------

def test_mp_median_matches_known_value_and_simulation():
    assert mp_median(1.0) == pytest.approx(0.6528, abs=2e-4)        # Gavish & Donoho (2014), beta = 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 1000, generator=g, dtype=torch.float64)
    eig = torch.linalg.eigvalsh(x.T @ x / 2000)
    assert mp_median(0.5) == pytest.approx(float(eig.median()), rel=0.01)


@pytest.mark.parametrize("shape", [(256, 128), (128, 128), (192, 576)])
def test_snr_is_low_on_noise_and_high_on_planted_low_rank(shape):
    g = torch.Generator().manual_seed(0)
    m, n = shape
    sigma = 0.05
    noise = sigma * torch.randn(m, n, generator=g)
    pure = matrix_snr(noise)
    assert pure.snr < 0.05 and pure.n_signal <= 1
    assert pure.sigma == pytest.approx(sigma, rel=0.05)
    # rank 4 signal, singular values 4-7x the noise edge
    u = torch.linalg.qr(torch.randn(m, 4, generator=g))[0]
    v = torch.linalg.qr(torch.randn(n, 4, generator=g))[0]
    edge = sigma * (math.sqrt(m) + math.sqrt(n))
    planted = matrix_snr(noise + u @ torch.diag(torch.tensor([4.0, 5.0, 6.0, 7.0]) * edge) @ v.T)
    # the 4 planted directions, plus at most one noise value grazing the edge (finite-size fluctuation)
    assert planted.snr > 1.0 and 4 <= planted.n_signal <= 5
    assert planted.sigma == pytest.approx(sigma, rel=0.1)            # the median ignores the planted directions


def test_spectrum_trains_the_planted_matrix(tiny_model_dir):
    model = fresh(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            w = layer.self_attn.q_proj.weight
            w.copy_(0.05 * torch.randn(w.shape, generator=g))
            if i == 1:
                u, v = torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)
                w.add_(0.5 * u @ v.T)
    prepared = prepare_method(model, method_options(name="spectrum", spectrum_top_percent=50), 1e-3)
    assert model.model.layers[1].self_attn.q_proj.weight.requires_grad
    assert not model.model.layers[0].self_attn.q_proj.weight.requires_grad
    assert not model.model.embed_tokens.weight.requires_grad
    q = {r.layer: r.result.snr for r in prepared.spectrum_scan if r.type == "self_attn.q_proj"}
    assert q[1] > 1.0 > 0.05 > q[0]


# --- bottleneck, optimizers, prompt init, memory ---------------------------------------------------

def test_bottleneck_starts_as_the_base_and_can_be_switched_off(tiny_model_dir, tokenizer, memo_set, tmp_path):
    ids = torch.randint(0, 2000, (2, 9), generator=torch.Generator().manual_seed(0))
    base_logits = fresh(tiny_model_dir).eval()(input_ids=ids).logits
    prepared = prepare_method(fresh(tiny_model_dir), method_options(name="bottleneck", bottleneck_size=8), 1e-2)
    model = prepared.model.eval()
    assert torch.equal(model(input_ids=ids).logits, base_logits)          # up-projection starts at zero
    train(prepared, tokenizer, memo_set, tmp_path, steps=3)
    model.eval()
    with torch.no_grad():
        assert (model(input_ids=ids).logits - base_logits).abs().max() > 1e-3
        with adapters_off(model):
            assert torch.equal(model(input_ids=ids).logits, base_logits)


def test_loraplus_gives_b_a_higher_learning_rate(tiny_model_dir):
    prepared = prepare_method(fresh(tiny_model_dir), method_options(name="lora", r=4, loraplus_lr_ratio=16), 1e-3)
    opt = prepared.hooks.optimizer(prepared.param_groups)
    names = {id(p): n for n, p in prepared.model.named_parameters()}
    lrs = {("lora_B" in names[id(p)]): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[True] == pytest.approx(16e-3) and lrs[False] == pytest.approx(1e-3)


@pytest.mark.parametrize("option", [{"loraplus_lr_ratio": 16}, {"lora_fa": True}])
def test_replacement_optimizers_take_train_weight_decay(option, tiny_model_dir, tokenizer, memo_set, tmp_path):
    from tunesmith.train.trainer import Trainer

    prepared = prepare_method(fresh(tiny_model_dir), method_options(name="lora", r=4, **option), 1e-3)
    cfg = TrainConfig(max_steps=1, batch_size=8, lr=1e-3, weight_decay=0.05, precision="fp32")
    trainer = Trainer(cfg, DataConfig(max_len=64), prepared, tokenizer, memo_set, [], tmp_path)
    decays = {g.get("weight_decay") for g in trainer.optimizer.param_groups if g["params"]}
    # LoRA+ leaves embedding groups undecayed by design; every LoRA matrix group gets train.weight_decay.
    assert 0.05 in decays and decays <= {0.05, 0.0}


def test_prompt_tuning_never_packs_rows(tiny_model_dir, tokenizer, memo_set, tmp_path):
    from tunesmith.train.trainer import Trainer

    prepared = prepare_method(fresh(tiny_model_dir), method_options(name="prompt", num_virtual_tokens=4), 1e-2)
    cfg = TrainConfig(max_steps=1, batch_size=8, lr=1e-2, micro_batch_size=8, precision="fp32")
    trainer = Trainer(cfg, DataConfig(max_len=64, packing=True), prepared, tokenizer, memo_set, [], tmp_path)
    (batch,) = list(trainer._micro_batches(0))
    assert batch.input_ids.shape[0] == 8  # one example per row although data.packing is on


def test_lora_fa_keeps_a_at_its_init(tiny_model_dir, tokenizer, memo_set, tmp_path):
    torch.manual_seed(0)
    prepared = prepare_method(fresh(tiny_model_dir), method_options(name="lora", r=4, lora_fa=True), 1e-2)
    a0 = {n: p.detach().clone() for n, p in prepared.model.named_parameters() if "lora_A" in n}
    b0 = {n: p.detach().clone() for n, p in prepared.model.named_parameters() if "lora_B" in n}
    train(prepared, tokenizer, memo_set, tmp_path, steps=3)
    params = dict(prepared.model.named_parameters())
    assert all(torch.equal(params[n], a) for n, a in a0.items())
    assert all((params[n] - b).abs().max() > 0 for n, b in b0.items())


def test_prompt_init_from_text_copies_token_embeddings(tiny_model_dir, tokenizer):
    text = "Answer with the item code."
    model = fresh(tiny_model_dir)
    embed = model.get_input_embeddings().weight.detach().clone()
    prepared = prepare_method(model, method_options(name="prompt", num_virtual_tokens=4, prompt_init_text=text), 1e-2)
    virtual = prepared.model.prompt_encoder["default"].embedding.weight.detach()
    ids = tokenizer(text)["input_ids"][:4]
    assert torch.equal(virtual, embed[ids])


def test_memory_estimate_counts_weights_grads_and_adam(tiny_model_dir):
    from transformers import AutoConfig

    from tunesmith.methods import METHODS
    from tunesmith.methods.inventory import footprint

    config = AutoConfig.from_pretrained(str(tiny_model_dir))
    n = sum(p.numel() for p in fresh(tiny_model_dir).parameters())
    full = footprint(config, METHODS["full"])
    assert full.trainable == n and full.memory_bytes == 16 * n       # fp32 weight + grad + 2 Adam moments
    lora, qlora = footprint(config, METHODS["lora"]), footprint(config, METHODS["qlora"])
    assert lora.memory_bytes == 4 * n + 16 * lora.trainable
    assert qlora.trainable == lora.trainable and qlora.memory_bytes < lora.memory_bytes


# --- LoRA scaling: lora vs rslora, and LoRA-FA's projection ----------------------------------------

R, ALPHA = 4, 8.0


@pytest.mark.parametrize("keys, scale", [
    ({"name": "lora"}, ALPHA / R),                       # 2.0
    ({"name": "rslora"}, ALPHA / math.sqrt(R)),          # 4.0
    ({"name": "lora", "rslora": True}, ALPHA / math.sqrt(R)),
    ({"name": "dora", "rslora": True}, ALPHA / math.sqrt(R)),
])
def test_lora_scaling_is_alpha_over_r_and_rslora_alpha_over_sqrt_r(keys, scale, tiny_model_dir):
    prepared = prepare_method(fresh(tiny_model_dir), method_options(r=R, alpha=ALPHA, **keys), 1e-3)
    layers = [m for m in prepared.model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(layers) == 14 and {m.scaling["default"] for m in layers} == {scale}
    if keys["name"] == "dora":
        return   # DoRA renormalises W + s B A per column, so its output is not W x + s B A x
    # The forward really adds scale * B A x (checked on one layer, with B moved off its zero init).
    layer = prepared.model.base_model.model.model.layers[0].self_attn.q_proj
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape, generator=g))
        x = torch.randn(3, 64, generator=g)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        torch.testing.assert_close(layer(x) - layer.base_layer(x), scale * (x @ a.T @ b.T), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, rslora, scale", [("lora", False, ALPHA / R), ("lora", True, ALPHA / math.sqrt(R)),
                                                 ("rslora", False, ALPHA / math.sqrt(R))])
def test_lora_fa_optimizer_projects_with_the_adapters_own_scale(name, rslora, scale, tiny_model_dir):
    cfg = method_options(name=name, r=R, alpha=ALPHA, rslora=rslora, lora_fa=True)
    prepared = prepare_method(fresh(tiny_model_dir), cfg, 1e-3)
    opt = prepared.hooks.optimizer(prepared.param_groups)
    layer_scales = {m.scaling["default"] for m in prepared.model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    (group,) = opt.param_groups
    assert group["scaling_factor"] == scale and layer_scales == {scale}
    if "scaling_factors" in group:   # newer peft: one scale per LoRA parameter, read from its layer
        per_param = {f for n, f in zip(group["names"], group["scaling_factors"]) if ".lora_" in n}
        assert per_param == {scale}


def test_delta_lora_start_without_lambda_is_a_config_error(tiny_model_dir):
    from tunesmith.errors import ConfigError

    cfg = method_options(name="delta_lora", r=R, delta_lora_lambda=0.0, delta_lora_start=5)
    with pytest.raises(ConfigError, match=r"method.delta_lora_start=5 with method.delta_lora_lambda=0"):
        prepare_method(fresh(tiny_model_dir), cfg, 1e-3)
    # Each key alone is a legal config.
    prepare_method(fresh(tiny_model_dir), method_options(name="delta_lora", r=R, delta_lora_lambda=0.0), 1e-3)
    prepare_method(fresh(tiny_model_dir), method_options(name="delta_lora", r=R, delta_lora_start=5), 1e-3)


# --- merge refusal for folders tunesmith did not write -------------------------------------------

def _peft_folder(tiny_model_dir, out, peft_config):
    from peft import get_peft_model

    model = get_peft_model(fresh(tiny_model_dir), peft_config)
    model.save_pretrained(out)
    assert not (out / "tunesmith.json").exists()
    return out


def _prefix_config():
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")


def _prompt_config():
    from peft import PromptTuningConfig

    return PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")


@pytest.mark.parametrize("make, method", [(_prefix_config, "prefix"), (_prompt_config, "prompt")])
def test_plain_peft_prompt_learning_folders_are_not_mergeable(make, method, tiny_model_dir, tmp_path):
    from tunesmith.errors import UserError
    from tunesmith.methods import require_mergeable

    folder = _peft_folder(tiny_model_dir, tmp_path / "adapter", make())
    with pytest.raises(UserError, match=f"a '{method}' adapter cannot be folded into the base weights, so it cannot be merged"):
        require_mergeable(folder)


def test_plain_peft_lora_folder_stays_mergeable(tiny_model_dir, tmp_path):
    from peft import LoraConfig

    from tunesmith.methods import require_mergeable

    folder = _peft_folder(tiny_model_dir, tmp_path / "adapter", LoraConfig(r=4, target_modules="all-linear"))
    require_mergeable(folder)   # no error


def test_bottleneck_folder_without_tunesmith_json_is_not_mergeable(tiny_model_dir, tmp_path):
    from tunesmith.errors import UserError
    from tunesmith.methods import require_mergeable

    prepared = prepare_method(fresh(tiny_model_dir), method_options(name="bottleneck", bottleneck_size=8), 1e-3)
    folder = tmp_path / "adapter"
    folder.mkdir()
    prepared.save(folder)
    assert (folder / "bottleneck_config.json").is_file() and not (folder / "tunesmith.json").exists()
    with pytest.raises(UserError, match="a 'bottleneck' adapter cannot be folded"):
        require_mergeable(folder, "exported to GGUF")
