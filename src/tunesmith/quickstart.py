"""`tunesmith quickstart`: the whole path on the embedded default model with a shipped task."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tunesmith.config import RunConfig, apply_overrides, load_config, validate
from tunesmith.pipeline import RunResult, run


def quickstart_config_path() -> Path:
    return Path(str(resources.files("tunesmith") / "assets" / "quickstart" / "config.yaml"))


def quickstart_config(out_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = quickstart_config_path()
    raw = load_config(path).model_dump()
    # Set directly, not as a `--set` string: that would parse the path as YAML ("2024", "true", "a #b").
    raw["output"]["dir"] = str(out_dir)
    return validate(apply_overrides(raw, overrides or []), str(path))


def run_quickstart(out_dir: str | Path, overrides: list[str] | None = None, **kwargs) -> RunResult:
    return run(quickstart_config(out_dir, overrides), **kwargs)
