"""Turn `model.base` into a local HF folder, never downloading anything."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ModelNotFound


@dataclass(frozen=True)
class ResolvedModel:
    path: Path          # folder holding config.json (or the GGUF file's folder)
    gguf_file: str | None = None
    label: str = ""


def _hf_cache_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        found = snapshot_download(repo_id, local_files_only=True)
        return Path(found)
    except Exception:  # any miss, offline error or malformed id means "not cached"
        return None


def converted_gguf(path: Path) -> Path:
    """A GGUF file is converted once into a cached HF folder keyed by its path, size and mtime."""
    import hashlib
    import json

    from tunesmith.io_utils import atomic_dir
    from tunesmith.models.gguf_import import convert_gguf_to_hf
    from tunesmith.models.paths import tunesmith_home

    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = tunesmith_home() / "models" / f"gguf-{path.stem}-{key}"
    if not (target / "tunesmith.json").is_file():
        with atomic_dir(target) as tmp:
            convert_gguf_to_hf(path, tmp)
            (tmp / "tunesmith.json").write_text(json.dumps({"source": str(path)}))
    return target


def resolve_base(base: str) -> ResolvedModel:
    searched: list[str] = []
    if base in ("default", "", None):
        from tunesmith.models.default import DEFAULT_NAME, ensure_default_model

        return ResolvedModel(ensure_default_model(), label=f"default ({DEFAULT_NAME})")

    path = Path(os.path.expanduser(base))
    if path.suffix == ".gguf":
        if path.is_file():
            return ResolvedModel(converted_gguf(path), gguf_file=path.name, label=str(path))
        searched.append(f"GGUF file {path} (does not exist)")
    elif path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedModel(path, label=str(path))
        if (path / "adapter_config.json").is_file():
            raise ModelNotFound(f"{path} is an adapter folder, not a base model",
                                hint="pass it as --adapter and the base model as --model")
        searched.append(f"local folder {path} (no config.json inside)")
    else:
        searched.append(f"local path {path} (does not exist)")

    if "/" in base and not path.exists():
        snap = _hf_cache_snapshot(base)
        if snap is not None and (snap / "config.json").is_file():
            return ResolvedModel(snap, label=base)
        searched.append(f"Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) for '{base}' (not cached; tunesmith never downloads)")

    raise ModelNotFound(
        f"model '{base}' not found. Searched:\n  - " + "\n  - ".join(searched),
        hint="use 'default', a local HF folder with config.json, a .gguf file, or a hub id already in the HF cache",
    )
