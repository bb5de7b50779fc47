"""Delta-LoRA (arXiv 2309.02411): LoRA whose frozen base weight also moves by the change of the
low-rank product at every step,

    W <- W + lambda * (P_{t+1} - P_t),   P = (alpha / r) * B @ A   (what the adapter adds to W).

The base weight gets no gradient and no optimizer state (the point of the method: full-rank
updates at LoRA's memory cost). The A/B factors live on the nn.Linear modules themselves, with a
forward hook adding x A^T B^T, so the model stays a plain transformers model; the final folder is
that model with W + P folded in, a full HF checkpoint that needs no adapter code to load.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pydantic import Field

from tunesmith.errors import ConfigError
from tunesmith.methods.hooks import TrainingHooks
from tunesmith.methods.options import AdapterShape
from tunesmith.methods.registry import Method, Prepared, register_method, trainable_groups
from tunesmith.methods.targets import decoder_linears


class DeltaLoRAOptions(AdapterShape):
    delta_lora_lambda: float = Field(0.5, ge=0.0, description="delta_lora: base-weight update factor for the change of the low-rank product")
    delta_lora_start: int = Field(0, ge=0, description="delta_lora: optimizer steps of plain LoRA before base weights start to move")


class DeltaLoRAState:
    """The adapted modules and the previous step's factors (r x (in + out) each: cheap to keep)."""

    def __init__(self, modules: list[tuple[str, torch.nn.Linear]], scale: float, lam: float, start: int):
        self.modules, self.scale, self.lam, self.start = modules, scale, lam, start
        self.step = 0
        self.prev = {}
        self.remember()

    def remember(self) -> None:
        self.prev = {name: (m.delta_lora_A.detach().clone(), m.delta_lora_B.detach().clone()) for name, m in self.modules}

    def product(self, module, a=None, b=None) -> torch.Tensor:
        a = module.delta_lora_A if a is None else a
        b = module.delta_lora_B if b is None else b
        return self.scale * (b.detach().float() @ a.detach().float())           # (out, in)

    @torch.no_grad()
    def after_step(self) -> None:
        self.step += 1
        if self.step > self.start and self.lam:
            for name, m in self.modules:
                a0, b0 = self.prev[name]
                delta = self.product(m) - self.product(m, a0, b0)
                m.weight.add_((self.lam * delta).to(m.weight.dtype))
        self.remember()

    def extra_state(self) -> dict[str, torch.Tensor]:
        # The moved base weights are not trainable parameters, so checkpoints carry them here.
        out = {f"{name}.weight": m.weight for name, m in self.modules}
        out["delta_lora_step"] = torch.tensor([self.step])
        return out

    @torch.no_grad()
    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, m in self.modules:
            m.weight.copy_(state[f"{name}.weight"])
        self.step = int(state["delta_lora_step"][0])
        self.remember()   # A, B were restored from the checkpoint before this call

    @torch.no_grad()
    def merged_state_dict(self, model) -> dict[str, torch.Tensor]:
        ours = {f"{name}.weight": m for name, m in self.modules}
        sd = {}
        for key, value in model.state_dict().items():
            if ".delta_lora_" in key:
                continue
            if key in ours:
                m = ours[key]
                value = (m.weight.float() + self.product(m)).to(m.weight.dtype)
            sd[key] = value
        return sd


def _lora_forward_hook(module, args, output):
    x = module.delta_lora_dropout(args[0])
    return output + module.delta_lora_scale * ((x @ module.delta_lora_A.t().to(x.dtype)) @ module.delta_lora_B.t().to(x.dtype))


def attach(model, cfg) -> DeltaLoRAState:
    for p in model.parameters():
        p.requires_grad_(False)
    modules = decoder_linears(model, cfg.target_modules)
    scale = cfg.alpha / cfg.r
    for _, m in modules:
        dev = m.weight.device
        a = torch.empty(cfg.r, m.in_features, device=dev)
        if not a.is_meta:
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))   # as peft initialises lora_A
        m.delta_lora_A = torch.nn.Parameter(a)
        m.delta_lora_B = torch.nn.Parameter(torch.zeros(m.out_features, cfg.r, device=dev))  # P_0 = 0
        m.delta_lora_scale = scale
        m.delta_lora_dropout = torch.nn.Dropout(cfg.dropout) if cfg.dropout else torch.nn.Identity()
        m.register_forward_hook(_lora_forward_hook)
    return DeltaLoRAState(modules, scale, cfg.delta_lora_lambda, cfg.delta_lora_start)


@register_method
class DeltaLoRA(Method):
    name = "delta_lora"
    summary = "LoRA whose frozen base weights also move by lambda x the change of B·A each step; saves a full model"
    options = DeltaLoRAOptions
    order = 40
    kind = "full"

    def check(self, cfg) -> None:
        super().check(cfg)
        if cfg.delta_lora_lambda == 0 and cfg.delta_lora_start > 0:
            # lambda 0 never moves the base weights, so a step to start moving them at says the
            # config meant something it does not do.
            raise ConfigError(f"method.delta_lora_start={cfg.delta_lora_start} with method.delta_lora_lambda=0: "
                              "the base weights never move, so there is nothing to start",
                              hint="set method.delta_lora_lambda > 0 (the paper uses 0.5), or drop delta_lora_start")

    def prepare(self, model, cfg, lr):
        self.check(cfg)
        state = attach(model, cfg)

        def save(model, out_dir: Path) -> None:
            model.save_pretrained(out_dir, state_dict=state.merged_state_dict(model), safe_serialization=True)

        hooks = TrainingHooks(after_step=state.after_step, extra_state=state.extra_state,
                              load_extra_state=state.load_extra_state)
        prepared = Prepared(model, trainable_groups(model, lr), kind=self.kind, hooks=hooks, saver=save)
        prepared.delta_lora = state   # for tests and tools that inspect the base-weight updates
        return prepared
