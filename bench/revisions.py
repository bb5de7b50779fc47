"""tunesmith's source as it was at a git revision, for benches that compare against it in one run."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def source_at(rev: str, out: Path) -> Path:
    """`src/` at `rev`, exported once with `git archive` into out/rev-SHA; put it first on PYTHONPATH."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    folder = out / f"rev-{sha}"
    if not (folder / "src" / "tunesmith").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "src"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "src"
