"""The CLI starts without torch: `--help`, `data ...` and the config model itself must not pay seconds
of torch/peft imports (method modules are imported on the first method look-up)."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stdout.split())


def test_help_and_the_config_model_import_no_torch():
    loaded = _modules_after("import tunesmith.cli, tunesmith.config\n"
                            "from tunesmith.cli import _load_commands\n_load_commands()")
    assert "torch" not in loaded and "peft" not in loaded


def test_the_first_method_look_up_imports_every_method():
    loaded = _modules_after("from tunesmith.methods import METHODS\nassert 'vera' in METHODS and 'bottleneck' in METHODS")
    assert "tunesmith.methods.vera" in loaded and "torch" in loaded
