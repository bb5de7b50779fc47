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


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, trainer_state: dict,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    final = root / checkpoint_name(step)
    with atomic_dir(final) as tmp:
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        if extra_tensors:
            save_file({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()}, tmp / "extra.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   tmp / "optim.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=2))
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def load_weights(path: Path, model) -> dict[str, torch.Tensor]:
    """Load a checkpoint's trainable weights into `model`; return its extra method state ({} if none)."""
    load_trainable_state(model, load_file(path / "trainable.safetensors"))
    return load_file(path / "extra.safetensors") if (path / "extra.safetensors").exists() else {}


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[dict, dict[str, torch.Tensor]]:
    extra = load_weights(path, model)
    blob = torch.load(path / "optim.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    restore_rng(blob["rng"])
    return json.loads((path / "trainer_state.json").read_text()), extra


def prune(root: Path, keep: int, protect: Path | None = None) -> None:
    ckpts = list_checkpoints(root)
    for path in ckpts[:-keep] if keep else ckpts:
        if protect is not None and path.resolve() == protect.resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)
