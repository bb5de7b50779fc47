"""`tunesmith quickstart`: the whole path on the embedded default model with a shipped task."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tunesmith.config import RunConfig, load_config
from tunesmith.pipeline import RunResult, run


def quickstart_config_path() -> Path:
    return Path(str(resources.files("tunesmith") / "assets" / "quickstart" / "config.yaml"))


def quickstart_config(out_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    return load_config(quickstart_config_path(), [f"output.dir={out_dir}", *(overrides or [])])


def before_after_rows(report: dict) -> list[tuple[str, ...]]:
    metrics = report["metrics"]
    rows = []
    for name, entry in report["systems"].items():
        rows.append((name, *(f"{entry[m]:.3f}" for m in metrics)))
    return rows


def run_quickstart(out_dir: str | Path, overrides: list[str] | None = None, **kwargs) -> RunResult:
    return run(quickstart_config(out_dir, overrides), **kwargs)
