"""Which accelerate backend a run uses, and how each one holds parameters and optimizer state.

`accelerate launch --config_file examples/distributed/X.yaml` picks the backend through environment
variables; `make_accelerator` turns them into an Accelerator, also on a machine without a GPU, where
accelerate on its own would run an FSDP config as plain DDP and a DeepSpeed one with every process
believing it is process 0 of 1. torch's FSDP2 and DeepSpeed (DS_ACCELERATOR=cpu) both run on CPU over
gloo, which is how the test suite checks them.

A `Layout` says how a backend keeps state across processes: replicated (one process, DDP, ZeRO-2's
parameters), sharded parameters (FSDP2: DTensors; ZeRO-3: partitioned), sharded optimizer state
(FSDP2, ZeRO-2/3). The trainer saves and loads checkpoints and the final model through it, so the
files are the same whatever the backend: full tensors, written by the main process.
"""

from __future__ import annotations

import contextlib
import os

import torch

from tunesmith.errors import UserError


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def make_accelerator():
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs

    if torch.cuda.is_available():
        return Accelerator()
    if _env_flag("ACCELERATE_USE_DEEPSPEED") and _launched():
        # Without a backend accelerate finds none for the CPU and reports 1 process; DeepSpeed's CPU
        # accelerator speaks gloo (or oneCCL, when installed, if DS_ACCELERATOR=cpu asks for it).
        return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
    acc = Accelerator(cpu=True)
    if _env_flag("ACCELERATE_USE_FSDP") and acc.num_processes > 1:
        # accelerate only turns FSDP on for GPU-like devices; FSDP2's fully_shard works on CPU over
        # gloo, so switch the (process-wide) state to it and prepare() takes accelerate's own FSDP2 path.
        plugin = FullyShardedDataParallelPlugin()
        if plugin.fsdp_version != 2:
            raise UserError("FSDP on CPU needs fsdp_version: 2 in the accelerate config",
                            hint="use examples/distributed/fsdp.yaml")
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return acc


def backend_name(acc) -> str:
    """What the run used, for train_summary.json: "single", "ddp", "fsdp2", "deepspeed-zero2" ..."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED:
        return f"deepspeed-zero{acc.state.deepspeed_plugin.zero_stage}"
    if acc.distributed_type == DistributedType.FSDP:
        return f"fsdp{acc.state.fsdp_plugin.fsdp_version}"
    return "ddp" if acc.num_processes > 1 else "single"


def gather_to_main(acc, obj):
    """Every process's `obj`, in rank order, on the main process (None elsewhere). Collective."""
    if acc.num_processes == 1:
        return [obj]
    out = [None] * acc.num_processes if acc.is_main_process else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


# --- layouts ---------------------------------------------------------------------------------


class Layout:
    """Replicated: every process holds whole parameters and the whole optimizer state (1 process, DDP)."""

    sharded_params = False

    def __init__(self, acc):
        self.acc = acc

    def check(self, prepared, backend: str) -> None:
        """Refuse methods whose saving or per-step hooks read whole parameters on one process."""
        if not self.sharded_params:
            return
        if prepared.saver is not None or prepared.hooks.after_step is not None:
            raise UserError(f"this method writes or moves parameters itself, which {backend} shards over processes",
                            hint="train it with one process, DDP (examples/distributed/ddp*.yaml) or ZeRO-2")

    def full_state(self, model, names: set[str] | None = None) -> dict[str, torch.Tensor] | None:
        """`model.state_dict()` (only `names` if given) as whole CPU tensors on the main process.

        Collective: every process calls it. Replicated parameters need no gathering.
        """
        if not self.acc.is_main_process:
            return None
        return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if names is None or k in names}

    def load_params(self, model, state: dict[str, torch.Tensor]) -> None:
        """Copy whole tensors into the named parameters; every process calls it with the same state."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def optimizer_state(self, model, optimizer):
        """What the main process writes as the optimizer's state (collective)."""
        return optimizer.state_dict() if self.acc.is_main_process else None

    def load_optimizer_state(self, model, optimizer, saved) -> None:
        optimizer.load_state_dict(saved)


class Fsdp2Layout(Layout):
    """FSDP2: parameters and optimizer state are DTensors sharded on dim 0 over the processes."""

    sharded_params = True

    def full_state(self, model, names=None):
        from torch.distributed.tensor import DTensor

        out = {}
        for k, v in model.state_dict().items():
            if names is not None and k not in names:
                continue
            # full_tensor() all-gathers: every process runs it, in the same order.
            whole = v.full_tensor() if isinstance(v, DTensor) else v
            if self.acc.is_main_process:
                out[k] = whole.detach().cpu().contiguous()
        return out if self.acc.is_main_process else None

    def load_params(self, model, state):
        from torch.distributed.tensor import DTensor, distribute_tensor

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                p = params[name]
                if isinstance(p, DTensor):
                    # Every process has the whole tensor, so each cuts its own shard without communication.
                    value = distribute_tensor(value.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)
                p.copy_(value)

    def optimizer_state(self, model, optimizer):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return full if self.acc.is_main_process else None

    def load_optimizer_state(self, model, optimizer, saved):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, saved, options=StateDictOptions(full_state_dict=True))


class DeepSpeedLayout(Layout):
    """DeepSpeed ZeRO: optimizer state (and fp32 master weights) partitioned; stage 3 partitions parameters too."""

    def __init__(self, acc):
        super().__init__(acc)
        self.sharded_params = acc.state.deepspeed_plugin.zero_stage == 3

    def _zero_optimizer(self):
        return self.acc.deepspeed_engine_wrapped.engine.optimizer

    @contextlib.contextmanager
    def _gathered(self, model, modifier_rank=None):
        if not self.sharded_params:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=modifier_rank):
            yield

    def full_state(self, model, names=None):
        with self._gathered(model):
            return super().full_state(model, names)

    def load_params(self, model, state):
        # modifier_rank=0: what process 0 writes is partitioned back out on leaving the block.
        with self._gathered(model, modifier_rank=0):
            super().load_params(model, state)

    def optimizer_state(self, model, optimizer):
        # Each process's partition, in rank order: the list ZeRO's load_state_dict takes back.
        return gather_to_main(self.acc, self._zero_optimizer().state_dict())

    def load_optimizer_state(self, model, optimizer, saved):
        # From the saved fp32 master partitions, so resuming is exact whatever the parameter dtype.
        self._zero_optimizer().load_state_dict(saved, load_optimizer_states=True, load_from_fp32_weights=True)


def layout_for(acc) -> Layout:
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP and acc.state.fsdp_plugin.fsdp_version != 2:
        raise UserError("tunesmith trains with FSDP2 only (fsdp_version: 1 in the accelerate config)",
                        hint="set fsdp_version: 2, as in examples/distributed/fsdp.yaml")
    layouts = {DistributedType.FSDP: Fsdp2Layout, DistributedType.DEEPSPEED: DeepSpeedLayout}
    return layouts.get(acc.distributed_type, Layout)(acc)


@contextlib.contextmanager
def main_process_alone():
    """Models loaded and run by this process alone (evaluation after training), also after ZeRO-3.

    accelerate registers a ZeRO-3 config with transformers, whose from_pretrained then builds every
    model under deepspeed.zero.Init and whose generate() syncs every step over the processes: both
    collective, so the main process would wait for processes that have finished.
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
