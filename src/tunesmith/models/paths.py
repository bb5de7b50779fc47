"""Where tunesmith keeps converted models."""

from __future__ import annotations

import os
from pathlib import Path


def tunesmith_home() -> Path:
    env = os.environ.get("TUNESMITH_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tunesmith"))
