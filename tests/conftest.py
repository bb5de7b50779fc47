"""Shared fixtures: tiny random models (milliseconds per step) with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# `make test` runs the suite in pytest-xdist workers: each gets its share of the cores (set before torch
# starts its thread pool, and inherited by the CLI subprocesses tests start), so two workers on two cores
# overlap one test's Python and I/O with another's matmuls instead of fighting over both cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_threads)

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(_threads)

# Tests never reach a hub, and their progress bars would only clutter the output.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded default converted to an HF folder (cached in $TUNESMITH_HOME after the first run)."""
    from tunesmith.models.default import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    from tunesmith.models import load_tokenizer

    return load_tokenizer(str(default_model_dir))


def make_tiny_llama(tokenizer, out: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0,
                    initializer_range: float = 0.2, max_positions: int = 1024) -> Path:
    """A random 2-layer Llama with hidden size 64 sharing SmolLM2's tokenizer and chat template.

    initializer_range is 10x the usual 0.02: with a tied head that small, logits of a unit-RMS hidden
    state stay below ~1.3, so an adapter that leaves the embeddings frozen could not lower the loss.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, tie_word_embeddings=True, initializer_range=initializer_range,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer, tmp_path_factory) -> Path:
    return make_tiny_llama(tokenizer, tmp_path_factory.mktemp("tiny-llama"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def memo_data(tmp_path) -> Path:
    """A small memorisable chat set: the loss on it must fall fast on any working method."""
    rows = [{"messages": [{"role": "user", "content": f"Code for item {i}?"},
                          {"role": "assistant", "content": f"ITEM-{i:03d}-{'ABCDEFGH'[i % 8]}"}]} for i in range(16)]
    return write_jsonl(tmp_path / "memo.jsonl", rows)
