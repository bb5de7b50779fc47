"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler, RNG and data position.

Each checkpoint is written to a temporary folder and renamed into place, so a run killed at any
moment leaves only complete checkpoints behind.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunesmith.io_utils import atomic_dir
from tunesmith.run_dir import CHECKPOINT_NAME, checkpoint_name


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(root: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state, scheduler,
                    trainer_state: dict, extra_tensors: dict[str, torch.Tensor] | None = None,
                    rng_states: list[dict] | None = None) -> Path:
    """Write one checkpoint (main process). `trainable`: whole tensors by parameter name; `optimizer_state`:
    what the run's Layout gave; `rng_states`: every process's RNG, in rank order (default: this one's)."""
    rng_states = rng_states or [rng_state()]
    final = root / checkpoint_name(step)
    with atomic_dir(final) as tmp:
        save_file(trainable, tmp / "trainable.safetensors")
        if extra_tensors:
            save_file({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()}, tmp / "extra.safetensors")
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng_states[0],
                    "rng_per_rank": rng_states}, tmp / "optim.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=2))
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A checkpoint's trainable weights and its extra method state ({} if none)."""
    extra = load_file(path / "extra.safetensors") if (path / "extra.safetensors").exists() else {}
    return load_file(path / "trainable.safetensors"), extra


def read_checkpoint(path: Path, rank: int = 0) -> tuple[dict, dict]:
    """(trainer state, the optim.pt blob with `rng` set to process `rank`'s RNG state)."""
    blob = torch.load(path / "optim.pt", weights_only=False)
    per_rank = blob.get("rng_per_rank") or [blob["rng"]]
    # A checkpoint from a run with fewer processes has no RNG for this one: reuse the main one's.
    blob["rng"] = per_rank[rank] if rank < len(per_rank) else per_rank[0]
    return json.loads((path / "trainer_state.json").read_text()), blob


def prune(root: Path, keep: int, protect: Path | None = None) -> None:
    ckpts = list_checkpoints(root)
    for path in ckpts[:-keep] if keep else ckpts:
        if protect is not None and path.resolve() == protect.resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)
