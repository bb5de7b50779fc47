"""Per-row LoRA: one forward pass over a batch whose rows use different adapters.

The idea of S-LoRA / Punica, in plain torch: every adapted linear layer keeps the LoRA matrices of
all loaded adapters stacked by slot, zero-padded to the largest rank,

    A: (S, in, r_max)     B: (S, r_max, out)   (B already multiplied by alpha / r)

and slot 0 is all zeros (the base model). Before a forward pass the engine sets `slots`, a (batch,)
tensor naming each row's adapter; the layer then adds

    delta = bmm(bmm(x, A[slots]), B[slots])          # x (batch, T, in) -> (batch, T, out)

so the base weights are read once for the whole batch and each row pays only for its rank-r delta.
Zero padding is exact: the padded rank columns contribute 0.

A batch on one adapter adds `(x @ A[s]) @ B[s]`. A batch mixing k adapters does not gather A[slots]
per row ((batch, in, r) copies) nor loop over the k groups (4k small ops per layer: on a 2-core CPU,
with 4 adapters in fp32 that was 15 % of a decode step, in bf16 42 %). Each layer instead keeps the
active adapters side by side, A_k: (in, k * r_max) and B_k: (k * r_max, out), built once per set of
active adapters, and computes

    delta = ((x @ A_k) * mask) @ B_k          # mask: (batch, k * r_max), 1 on the row's own adapter block

two matmuls whatever k: a row's other blocks are multiplied by exact zeros, and rows on the base have
an all-zero mask.
"""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.errors import UserError
from tunesmith.models import packed_linear


class MultiLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, bank: LoRABank):
        super().__init__()
        self.base = base
        self.bank = bank
        n_slots = bank.capacity
        dtype, device = bank.dtype or base.weight.dtype, base.weight.device
        # Buffers, not parameters: nothing here trains, and state_dict stays the base model's.
        self.register_buffer("A", torch.zeros(n_slots, base.in_features, bank.r_max, dtype=dtype, device=device), persistent=False)
        self.register_buffer("B", torch.zeros(n_slots, bank.r_max, base.out_features, dtype=dtype, device=device), persistent=False)
        self._stacked_key: tuple | None = None
        self._stacked: tuple[torch.Tensor, torch.Tensor] | None = None
        self._packed_key: tuple | None = None
        self._packs: tuple[torch.Tensor, torch.Tensor] | None = None

    def grow_rank(self, r_max: int) -> None:
        pad = r_max - self.A.shape[-1]
        if pad > 0:
            self.A = torch.nn.functional.pad(self.A, (0, pad))
            self.B = torch.nn.functional.pad(self.B, (0, 0, 0, pad))

    def grow_slots(self, capacity: int) -> None:
        extra = capacity - self.A.shape[0]
        if extra > 0:
            self.A = torch.cat([self.A, self.A.new_zeros(extra, *self.A.shape[1:])])
            self.B = torch.cat([self.B, self.B.new_zeros(extra, *self.B.shape[1:])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        slots = self.bank.slots
        if slots is None or self.bank.all_base:
            return y
        uniform = self.bank.uniform_slot
        mask = None if uniform is not None else self.bank.block_mask    # (batch, k * r_max)
        if mask is not None:
            mask = mask.view(mask.shape[0], *([1] * (x.dim() - 2)), -1)
        xb = packed_linear.bf16_input(x) if self.A.dtype == torch.bfloat16 and packed_linear.packing_available() else None
        if xb is not None:
            # bf16 stacks pre-packed for oneDNN: each small bf16 product otherwise reorders its operand on every
            # call (its fixed cost is most of a rank-r product's); the same numbers (packed_linear.py).
            pa, pb = self._packed()
            h = packed_linear.packed_matmul(xb, pa)
            return y + packed_linear.packed_matmul(h if mask is None else h.mul_(mask), pb)
        if uniform is not None:
            # Whole batch on one adapter: plain matmuls, no indexing.
            return y + (x @ self.A[uniform]) @ self.B[uniform]
        a, b = self._side_by_side()
        return y + ((x @ a) * mask) @ b

    def _packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The packed A (in -> r or k * r_max) and B of the batch's one adapter or of the side-by-side stacks,
        repacked when the batch's adapters or the adapter table change."""
        uniform = self.bank.uniform_slot
        key = (uniform, self.bank.active, self.bank.version)
        if self._packed_key != key:
            a, b = (self.A[uniform], self.B[uniform]) if uniform is not None else self._side_by_side()
            self._packs = (packed_linear.pack(a.t()), packed_linear.pack(b.t()))
            self._packed_key = key
        return self._packs

    def _side_by_side(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A_k (in, k * r_max) and B_k (k * r_max, out) of the bank's active slots, rebuilt when they or
        the adapter table change."""
        key = (self.bank.active, self.bank.version)
        if self._stacked_key != key:
            index = torch.tensor(self.bank.active, device=self.A.device)
            a = self.A.index_select(0, index)                          # (k, in, r)
            self._stacked = (a.permute(1, 0, 2).reshape(a.shape[1], -1),
                             self.B.index_select(0, index).reshape(-1, self.B.shape[-1]))
            self._stacked_key = key
        return self._stacked


class LoRABank:
    """Owns the slot table and the wrapped layers of one base model."""

    def __init__(self, model: nn.Module, capacity: int = 8, r_max: int = 8, dtype: torch.dtype | None = None):
        self.model = model
        # The stacks' dtype: the base layers' by default; a server running under bf16 autocast holds them in bf16.
        self.dtype = dtype
        self.capacity = capacity + 1            # + slot 0, the base model
        self.r_max = r_max
        self.layers: dict[str, MultiLoRALinear] = {}
        self.slot_of: dict[str, int] = {}       # adapter name -> slot
        self.slots: torch.Tensor | None = None
        self.all_base = True
        self.uniform_slot: int | None = None
        self.active: tuple[int, ...] = ()                # adapter slots of a mixed batch, ascending
        self.block_mask: torch.Tensor | None = None      # (batch, len(active) * r_max): 1 on each row's block
        self.version = 0                                 # bumped when adapters or their shapes change

    # -- per forward pass -------------------------------------------------------------------------
    def set_rows(self, row_slots: list[int]) -> None:
        param = next(self.model.parameters())
        self.slots = torch.tensor(row_slots, dtype=torch.long, device=param.device)
        distinct = set(row_slots)
        self.all_base = distinct == {0}
        self.uniform_slot = row_slots[0] if len(distinct) == 1 else None
        self.active, self.block_mask = (), None
        if self.uniform_slot is None:
            self.active = tuple(sorted(distinct - {0}))
            block = {s: i for i, s in enumerate(self.active)}
            # In the stacks' dtype, built once per pass: every adapted layer multiplies by it.
            mask = torch.zeros(len(row_slots), len(self.active), self.r_max, device=param.device,
                               dtype=self.dtype or param.dtype)
            for row, s in enumerate(row_slots):
                if s:
                    mask[row, block[s]] = 1.0
            self.block_mask = mask.view(len(row_slots), -1)

    def clear_rows(self) -> None:
        self.slots, self.all_base, self.uniform_slot, self.active, self.block_mask = None, True, None, (), None

    # -- adapters ---------------------------------------------------------------------------------
    def _wrap(self, module_name: str) -> MultiLoRALinear:
        if module_name in self.layers:
            return self.layers[module_name]
        parent_name, _, child = module_name.rpartition(".")
        try:
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            target = getattr(parent, child)
        except AttributeError:
            raise UserError(f"adapter targets '{module_name}', which the base model does not have",
                            hint="was it trained on a different base model?") from None
        if not isinstance(target, nn.Linear):
            raise UserError(f"adapter targets '{module_name}', a {type(target).__name__}, not a linear layer")
        wrapped = MultiLoRALinear(target, self)
        setattr(parent, child, wrapped)
        self.layers[module_name] = wrapped
        return wrapped

    def add(self, name: str, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int) -> int:
        if name in self.slot_of:
            raise UserError(f"adapter '{name}' is already loaded")
        # Check every shape before touching any layer, so a bad adapter leaves the bank unchanged.
        for module, (a, b) in weights.items():
            base = self._lookup_linear(module)
            if a.shape[0] != base.in_features or b.shape[1] != base.out_features:
                raise UserError(f"adapter '{name}': {module} is {a.shape[0]}->{b.shape[1]} but the base layer is "
                                f"{base.in_features}->{base.out_features}", hint="was it trained on a different base model?")
        used = set(self.slot_of.values())
        free = next((s for s in range(1, self.capacity) if s not in used), None)
        if free is None:
            self.capacity += max(4, self.capacity // 2)
            for layer in self.layers.values():
                layer.grow_slots(self.capacity)
            free = next(s for s in range(1, self.capacity) if s not in used)
        if rank > self.r_max:
            self.r_max = rank
            for layer in self.layers.values():
                layer.grow_rank(rank)
        for module, (a, b) in weights.items():
            layer = self._wrap(module)
            layer.grow_slots(self.capacity)
            layer.grow_rank(self.r_max)
            layer.A[free].zero_()
            layer.B[free].zero_()
            layer.A[free, :, :rank] = a.to(layer.A.dtype)
            layer.B[free, :rank, :] = b.to(layer.B.dtype)
        self.slot_of[name] = free
        self.version += 1
        return free

    def remove(self, name: str) -> None:
        slot = self.slot_of.pop(name)
        for layer in self.layers.values():
            layer.A[slot].zero_()
            layer.B[slot].zero_()
        self.version += 1

    def _lookup_linear(self, module_name: str) -> nn.Linear:
        if module_name in self.layers:
            return self.layers[module_name].base
        try:
            target = self.model.get_submodule(module_name)
        except AttributeError:
            raise UserError(f"adapter targets '{module_name}', which the base model does not have",
                            hint="was it trained on a different base model?") from None
        if not isinstance(target, nn.Linear):
            raise UserError(f"adapter targets '{module_name}', a {type(target).__name__}, not a linear layer")
        return target
