"""What the CLI keeps out of a user's screen (tunesmith.quiet): each filter is checked against the
message the dependency really emits, so a changed wording in a new release shows up here."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

from tunesmith.quiet import FOREIGN_LOG_LINES, foreign_warnings_ignored, quiet_cli


def test_peft_wrapping_warns_no_more_inside_the_guard(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def wrap():
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrap()
    foreign = [w for w in caught if issubclass(w.category, FutureWarning)]
    with warnings.catch_warnings(record=True) as guarded:
        warnings.simplefilter("always")
        with foreign_warnings_ignored():
            wrap()
    assert not [w for w in guarded if issubclass(w.category, FutureWarning)]
    # If peft stops warning, this filter is dead weight: the first assert says so.
    assert foreign, "peft no longer warns when wrapping; drop its entry from tunesmith.quiet"


def test_quiet_cli_drops_only_the_named_log_lines(caplog):
    quiet_cli()
    quiet_cli()  # idempotent: one filter per logger however often main() runs
    for name, prefix in FOREIGN_LOG_LINES.items():
        logger = logging.getLogger(name)
        assert len(logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=name):
            logger.warning(prefix + ": No module named 'kernels'")
            logger.warning("something else")
        assert [r.getMessage() for r in caplog.records if r.name == name] == ["something else"]
        caplog.clear()


def test_the_cli_turns_off_transformers_weight_loading_bars(tmp_path):
    # In a fresh process, as a user's: the setting must be in place before transformers is imported.
    code = ("from tunesmith.cli import main\n"
            "try:\n    main(['config', 'init', '-o', {!r}])\nexcept SystemExit:\n    pass\n"
            "from transformers.utils import logging\nprint('bars', logging.is_progress_bar_enabled())").format(str(tmp_path / "c.yaml"))
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "bars False" in out.stdout
    plain = subprocess.run([sys.executable, "-c", "from transformers.utils import logging\n"
                            "print('bars', logging.is_progress_bar_enabled())"], capture_output=True, text=True, env=env)
    assert "bars True" in plain.stdout  # without the CLI they are on: the check above can fail


def test_the_cli_keeps_the_hub_offline_before_anything_imports_it(tmp_path):
    # A fresh process, as a user's: huggingface_hub reads HF_HUB_OFFLINE once, when first imported, so the
    # CLI must set it before any command imports transformers, peft or bitsandbytes.
    code = ("from tunesmith.cli import main\n"
            "try:\n    main(['config', 'init', '-o', {!r}])\nexcept SystemExit:\n    pass\n"
            "import peft\n"
            "from huggingface_hub import constants\nprint('offline', constants.HF_HUB_OFFLINE)").format(str(tmp_path / "c.yaml"))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}  # conftest sets both
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "offline True" in out.stdout
    assert "kernels-community" not in out.stderr      # bitsandbytes' lookup (AVX-512 bf16 CPUs) is not reported
    plain = subprocess.run([sys.executable, "-c", "from huggingface_hub import constants\nprint('offline', constants.HF_HUB_OFFLINE)"],
                           capture_output=True, text=True, env=env)
    assert "offline False" in plain.stdout   # without the CLI the hub is online: the check above can fail
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env | {"HF_HUB_OFFLINE": "0"})
    assert "offline False" in mine.stdout    # a user's own setting wins
