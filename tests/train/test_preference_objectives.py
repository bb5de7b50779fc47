"""Preference objectives against TRL on the same tokens: DPO's loss, rewards and gradients (sigmoid,
IPO, hinge) equal DPOTrainer's to 1e-5, ORPO's odds-ratio term equals ORPOTrainer's, and KTO's loss
equals KTOTrainer's on the same batch. Our side runs its own path: answers packed into one
padding-free row, the target-only fused head, the reference as a named frozen adapter."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tunesmith.data.tokenize import Answer, Feedback, Pair
from tunesmith.train.objective_options import DPOOptions, KTOOptions, ORPOOptions
from tunesmith.train.objectives import DPO, KTO, ORPO
from tunesmith.train.objectives.sequences import answer_logps
from tunesmith.train.reference import Reference

trl = pytest.importorskip("trl")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """TRL's trainers set accelerate's process-wide state (mixed precision among it); later tests in this
    process must not inherit it."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)

ROWS = [{"prompt": [{"role": "user", "content": f"Question {i}: {'why ' * (i % 3)}is it so?"}],
         "chosen": [{"role": "assistant", "content": f"Because {i}."}],
         "rejected": [{"role": "assistant", "content": f"No idea, {'really ' * (i % 4)}{i}"}]} for i in range(6)]


def _policy(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    torch.manual_seed(0)
    return get_peft_model(load_model(str(tiny_model_dir)),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"],
                                     lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM"))


def _move_away(model, seed=1):
    """Step the trainable adapter away from TRL's frozen 'ref' copy, so rewards are not all 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _ours(objective, model, items, check_grads=True):
    model.zero_grad(set_to_none=True)
    batch = objective.collate(items)
    assert getattr(batch, "answers", batch).input_ids.shape[0] == 1   # one padding-free row
    with objective.context(model):
        out = objective.loss(model, batch)
        (out.loss / out.units).backward()
    return out, _grads(model)


def _dpo_trainer(tiny_model_dir, tokenizer, tmp_path, **config):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model = _policy(tiny_model_dir)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(ROWS), report_to="none",
                     use_cpu=True, max_length=None, bf16=False, **config)   # compared in fp32
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)
    assert "ref" in model.peft_config       # TRL keeps the starting adapter as the frozen reference
    _move_away(model)
    return trainer, model


def _trl_pairs(trainer):
    ds = trainer.train_dataset
    rows = [ds[i] for i in range(len(ds))]
    pairs = [Pair(Answer(r["prompt_ids"] + r["chosen_ids"], len(r["prompt_ids"])),
                  Answer(r["prompt_ids"] + r["rejected_ids"], len(r["prompt_ids"]))) for r in rows]
    return rows, pairs


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_rewards_and_gradients_equal_trl(loss_type, tiny_model_dir, tokenizer, tmp_path):
    trainer, model = _dpo_trainer(tiny_model_dir, tokenizer, tmp_path, beta=0.2, loss_type=[loss_type])
    rows, pairs = _trl_pairs(trainer)
    model.train()
    model.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(model, trainer.data_collator(rows))
    trl_loss.backward()
    trl_grads, trl_metrics = _grads(model), {k: v[-1] for k, v in trainer._metrics["train"].items()}

    ours = DPO(opts=DPOOptions(beta=0.2, loss_type=loss_type), reference=Reference("start-adapter", "TRL's ref", adapter="ref"))
    out, grads = _ours(ours, model, pairs)
    n = out.units
    assert abs(float(out.loss) / n - float(trl_loss)) < 1e-5
    for ours_key, trl_key in (("rewards_chosen", "rewards/chosen"), ("rewards_rejected", "rewards/rejected"),
                              ("reward_margin", "rewards/margins"), ("reward_accuracy", "rewards/accuracies"),
                              ("logps_chosen", "logps/chosen"), ("logps_rejected", "logps/rejected")):
        assert abs(float(out.metrics[ours_key]) / n - trl_metrics[trl_key]) < 1e-4 * max(1.0, abs(trl_metrics[trl_key])), ours_key
    assert abs(trl_metrics["rewards/margins"]) > 0.05     # the policy really differs from the reference
    assert grads.keys() == trl_grads.keys() and len(grads) == 12   # A and B of 3 modules x 2 layers
    for name, g in grads.items():
        assert torch.allclose(g, trl_grads[name], atol=1e-5, rtol=1e-4), name


def test_dpo_label_smoothing_is_conservative_dpo_and_sft_weight_adds_the_chosen_nll():
    torch.manual_seed(0)
    policy, reference = torch.randn(8) * 3 - 20, torch.randn(8) * 3 - 20
    n_targets = torch.tensor([5.0, 7, 3, 4, 9, 2, 6, 6])
    delta = (policy[0::2] - reference[0::2]) - (policy[1::2] - reference[1::2])
    smooth = DPO(opts=DPOOptions(beta=0.5, label_smoothing=0.2)).pair_loss(policy, reference, n_targets)
    expected = -(0.8 * torch.nn.functional.logsigmoid(0.5 * delta) + 0.2 * torch.nn.functional.logsigmoid(-0.5 * delta))
    assert abs(float(smooth.loss) - float(expected.sum())) < 1e-5
    plain = DPO(opts=DPOOptions(beta=0.5)).pair_loss(policy, reference, n_targets)
    with_sft = DPO(opts=DPOOptions(beta=0.5, sft_weight=2.0)).pair_loss(policy, reference, n_targets)
    nll = float((-policy[0::2] / n_targets[0::2]).sum())
    assert abs(float(with_sft.loss) - float(plain.loss) - 2.0 * nll) < 1e-4


def test_orpo_odds_ratio_term_equals_trl(tiny_model_dir, tokenizer, tmp_path):
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    trainer, model = _dpo_trainer(tiny_model_dir, tokenizer, tmp_path)   # TRL's tokenization of the same rows
    _, pairs = _trl_pairs(trainer)
    orpo = ORPO(opts=ORPOOptions(beta=0.3))
    batch = orpo.collate(pairs)
    with torch.no_grad(), orpo.context(model):
        logps = answer_logps(model, batch, fast=True)
        out = orpo.pair_loss(logps, batch.n_targets)
    mean = logps / batch.n_targets
    fake_self = SimpleNamespace(beta=0.3, accelerator=SimpleNamespace(device="cpu"))
    losses, *_ , ratio_mean, log_odds_mean = ORPOTrainer.odds_ratio_loss(fake_self, mean[0::2], mean[1::2])
    nll = -mean[0::2]
    assert abs(float(out.loss) - float((nll - losses).sum())) < 1e-5
    assert abs(float(out.metrics["log_odds_ratio"]) / len(pairs) - float(log_odds_mean)) < 1e-5
    # The mean token log-prob is the plain definition: a full log_softmax over each answer alone.
    for k, answer in enumerate(a for p in pairs for a in (p.chosen, p.rejected)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([answer.ids])).logits[0, :-1].float()
        full = logits.log_softmax(-1).gather(1, torch.tensor(answer.ids[1:])[:, None]).squeeze(1)[answer.start - 1:]
        assert abs(float(full.sum()) - float(logps[k])) < 1e-4


def test_kto_loss_equals_trl(tiny_model_dir, tokenizer, tmp_path):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    rows = [{"prompt": r["prompt"], "completion": r["chosen" if i % 2 == 0 else "rejected"], "label": i % 2 == 0}
            for i, r in enumerate(ROWS)]
    model = _policy(tiny_model_dir)
    args = KTOConfig(output_dir=str(tmp_path / "kto"), per_device_train_batch_size=len(rows), report_to="none",
                     use_cpu=True, max_length=None, bf16=False, beta=0.2, desirable_weight=1.0, undesirable_weight=1.5)
    trainer = KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    _move_away(model)
    ds = trainer.train_dataset
    items = [ds[i] for i in range(len(ds))]
    model.train()
    model.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(model, trainer.data_collator(items))
    trl_loss.backward()
    trl_grads = _grads(model)
    kto = KTO(opts=KTOOptions(beta=0.2, desirable_weight=1.0, undesirable_weight=1.5),
              reference=Reference("start-adapter", "TRL's ref", adapter="ref"))
    feedback = [Feedback(Answer(r["prompt_ids"] + r["completion_ids"], len(r["prompt_ids"])), bool(r["label"])) for r in items]
    # TRL pairs each prompt with the previous example's completion for the KL estimate, as we do.
    assert [r["KL_completion_ids"] for r in items] == [items[i - 1]["completion_ids"] for i in range(len(items))]
    out, grads = _ours(kto, model, feedback)
    assert abs(float(out.loss) / out.units - float(trl_loss)) < 1e-5
    assert abs(float(out.metrics["kl"]) / out.units - trainer._metrics["train"]["kl"][-1]) < 1e-5
    for name, g in grads.items():
        assert torch.allclose(g, trl_grads[name], atol=1e-5, rtol=1e-4), name


def test_token_logps_of_the_fused_head_equal_log_softmax_with_gradients(tiny_model_dir):
    from tunesmith.models import load_model
    from tunesmith.train.loss import LinearTokenLogp

    torch.manual_seed(0)
    head = load_model(str(tiny_model_dir)).lm_head.weight.detach()
    h = torch.randn(37, head.shape[1], requires_grad=True)
    t = torch.randint(0, head.shape[0], (37,))
    w = torch.randn(37)
    fused = LinearTokenLogp.apply(h, head, t, torch.float32, 8)
    (fused * w).sum().backward()
    g_fused = h.grad.clone()
    h.grad = None
    plain = (h @ head.t()).log_softmax(-1).gather(1, t[:, None]).squeeze(1)
    (plain * w).sum().backward()
    assert torch.allclose(fused, plain, atol=1e-5) and torch.allclose(g_fused, h.grad, atol=1e-5)
    assert math.isfinite(float(fused.sum()))
