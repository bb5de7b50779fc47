"""What a run leaves in output.dir: re-runs, resumes of finished runs, the best checkpoint, a torn
metrics log, and the errors for output paths and bad freeze patterns."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_jsonl
from tests.train.test_engine import make_config
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.errors import ConfigError, UserError
from tunesmith.events import Events
from tunesmith.pipeline import run
from tunesmith.quickstart import quickstart_config
from tunesmith.train.logbook import Logbook


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def ckpt_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_a_second_run_into_the_same_folder_replaces_the_first(tmp_path, tiny_model_dir, memo_data):
    first = make_config(tmp_path, tiny_model_dir, memo_data, "first",
                        train={"max_steps": 6, "save_every": 2, "keep_checkpoints": 5}, output={"merge": True})
    run(load_config(first, [f"output.dir={tmp_path / 'run'}"]), events=Events())
    run_dir = tmp_path / "run"
    assert ckpt_names(run_dir) == ["step-000002", "step-000004", "step-000006"]
    assert (run_dir / "adapter").is_dir() and (run_dir / "merged").is_dir()
    (run_dir / "notes.txt").write_text("mine")
    second = make_config(tmp_path, tiny_model_dir, memo_data, "second", method={"name": "freeze", "layers_to_train": 1},
                         train={"max_steps": 3, "save_every": 3, "lr": 1e-3})
    result = run(load_config(second, [f"output.dir={run_dir}"]), events=Events())
    assert [r["step"] for r in rows(run_dir)] == [1, 2, 3]
    assert ckpt_names(run_dir) == ["step-000003"]
    # The first run's adapter and merged model are gone; the second run's full model is there.
    assert not (run_dir / "adapter").exists() and not (run_dir / "merged").exists()
    assert (run_dir / "model" / "config.json").is_file()
    assert json.loads((run_dir / "train_summary.json").read_text())["steps"] == 3 == result.train.steps
    assert (run_dir / "notes.txt").read_text() == "mine"  # not a run output: left alone
    if (run_dir / "tensorboard").exists():
        assert len(list((run_dir / "tensorboard").iterdir())) == 1  # one run's event file


def test_a_rerun_never_deletes_its_own_inputs(tmp_path, tiny_model_dir, memo_data):
    # output.dir is the folder the data lives in, and the data file is named like an output.
    data = tmp_path / "predictions.jsonl"
    data.write_bytes(memo_data.read_bytes())
    cfg = load_config(make_config(tmp_path, tiny_model_dir, data, "x", train={"max_steps": 2}),
                      [f"output.dir={tmp_path}"])
    run(cfg, events=Events())
    run(cfg, events=Events())
    assert data.read_bytes() == memo_data.read_bytes()
    assert [r["step"] for r in rows(tmp_path)] == [1, 2]


def test_resuming_a_finished_run_reports_it_unchanged(tmp_path, tiny_model_dir, memo_data):
    cfg = load_config(make_config(tmp_path, tiny_model_dir, memo_data, "done", train={"max_steps": 4, "save_every": 2}))
    before = run(cfg, events=Events()).train
    run_dir = tmp_path / "done"
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "lo')  # a torn last line, as a kill in the middle of an append leaves
    after = run(cfg, resume=True, events=Events()).train
    assert after.steps == 4 and after.tokens == 0
    assert after.first_loss == before.first_loss and after.final_loss == before.final_loss
    assert [r["step"] for r in rows(run_dir)] == [1, 2, 3, 4]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["first_loss"] == before.first_loss


def test_a_resumed_run_reports_the_first_loss_of_the_whole_run(tmp_path, tiny_model_dir, memo_data):
    cfg = load_config(make_config(tmp_path, tiny_model_dir, memo_data, "r",
                                  train={"max_steps": 6, "save_every": 2, "keep_checkpoints": 3}))
    whole = run(cfg, events=Events()).train
    shutil.rmtree(tmp_path / "r" / "checkpoints" / "step-000006")  # as if killed after step 4's checkpoint
    resumed = run(cfg, resume=True, events=Events()).train
    assert resumed.steps == 6
    assert resumed.first_loss == pytest.approx(whole.first_loss, abs=1e-6)
    assert resumed.final_loss == pytest.approx(whole.final_loss, abs=1e-5)
    assert resumed.first_loss > resumed.final_loss + 1.0  # the step-1 loss, not step 5's


def test_the_best_checkpoint_is_kept_and_reported_without_early_stopping(tmp_path, tiny_model_dir, memo_data):
    # Validation answers the same prompts with text training never shows: the loss improves while the
    # chat format is learnt, then worsens as the model commits to the training answers. (A huge LR
    # did this on one CPU kind and kept improving on another.) keep_checkpoints=1 would otherwise
    # prune the best, and a best at step 2 or 4 is not a multiple of save_every at all.
    val = write_jsonl(tmp_path / "val.jsonl", [{"messages": [{"role": "user", "content": f"Code for item {i}?"},
                                                             {"role": "assistant", "content": "no code, sorry"}]}
                                               for i in range(16)])
    cfg = load_config(make_config(tmp_path, tiny_model_dir, memo_data, "best", data={"val": str(val)},
                                  train={"max_steps": 16, "batch_size": 4, "eval_every": 2, "lr": 1e-2,
                                         "scheduler": "constant", "save_every": 8, "keep_checkpoints": 1,
                                         "early_stopping_patience": 0}))
    result = run(cfg, events=Events()).train
    run_dir = tmp_path / "best"
    vals = [(r["step"], r["val_loss"]) for r in rows(run_dir) if "val_loss" in r]
    best_step = min(vals, key=lambda v: v[1])[0]
    assert best_step < 16 and result.best_step == best_step
    best = run_dir / "checkpoints" / f"step-{best_step:06d}"
    assert json.loads((run_dir / "train_summary.json").read_text())["best_checkpoint"] == str(best)
    assert json.loads((best / "trainer_state.json").read_text())["step"] == best_step
    assert ckpt_names(run_dir) == sorted([best.name, "step-000016"])


def test_delta_lora_early_stopping_restores_the_moved_base_weights_too(tmp_path, tiny_model_dir, memo_data):
    cfg = load_config(make_config(tmp_path, tiny_model_dir, memo_data, "dl", data={"val_split": 0.25},
                                  method={"name": "delta_lora", "target_modules": ["q_proj", "v_proj"]},
                                  train={"max_steps": 40, "batch_size": 4, "eval_every": 2, "lr": 0.1,
                                         "scheduler": "constant", "early_stopping_patience": 2,
                                         "save_every": 1, "keep_checkpoints": 1}))
    result = run(cfg, events=Events()).train
    assert result.stopped_early and result.best_step < result.steps
    root = tmp_path / "dl" / "checkpoints"
    best, last = root / f"step-{result.best_step:06d}", root / f"step-{result.steps:06d}"
    trainable, extra = load_file(best / "trainable.safetensors"), load_file(best / "extra.safetensors")
    saved = load_file(tmp_path / "dl" / "model" / "model.safetensors")
    scale = cfg.method.alpha / cfg.method.r
    weights = [k for k in extra if k.endswith(".weight")]
    assert len(weights) == 4
    last_extra = load_file(last / "extra.safetensors")
    for key in weights:
        name = key[: -len(".weight")]
        a, b = trainable[f"{name}.delta_lora_A"], trainable[f"{name}.delta_lora_B"]
        # The base weight really moved after the best step, so restoring only A and B would not do.
        assert (last_extra[key] - extra[key]).abs().max() > 1e-4
        torch.testing.assert_close(saved[key], extra[key] + scale * (b @ a), atol=1e-6, rtol=0)


def test_torn_last_metrics_line_is_skipped_and_truncate_replaces_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "loss": 1.0 / i}) + "\n" for i in (1, 2, 3)) + '{"step": 4, "lo')
    book = Logbook(tmp_path, enabled=False)
    assert [r["step"] for r in book.rows()] == [1, 2, 3]
    inode = os.stat(path).st_ino
    book.truncate_after(2)
    assert path.read_text().splitlines() == [json.dumps({"step": 1, "loss": 1.0}), json.dumps({"step": 2, "loss": 0.5})]
    assert os.stat(path).st_ino != inode  # a new file renamed into place, never a half-rewritten one
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2"):  # only the last line may be torn
        book.rows()


@pytest.mark.parametrize("out", ["2024", "true", "runs/a #b", "[x]"])
def test_quickstart_out_is_taken_literally(out):
    cfg = quickstart_config(out)
    assert cfg.output.dir == out
    assert quickstart_config(out, ["train.lr=1e-4"]).train.lr == 1e-4
    assert quickstart_config(out, ["output.dir=elsewhere"]).output.dir == "elsewhere"  # --set still wins


def test_bad_freeze_pattern_is_a_config_error(tiny_model_dir, memo_data, tmp_path):
    from tunesmith.methods import get_method
    from tunesmith.models import load_model

    cfg = load_config(make_config(tmp_path, tiny_model_dir, memo_data, "f",
                                  method={"name": "freeze", "trainable_modules": ["lm_head", "layers.(0"]}))
    with pytest.raises(ConfigError, match=r"method.trainable_modules: 'layers.\(0' is not a valid regular expression"):
        get_method("freeze").prepare(load_model(str(tiny_model_dir)), cfg.method, 1e-3)


def cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, capsys.readouterr().err


def test_output_paths_that_cannot_be_folders_are_one_line_errors(tmp_path, tiny_model_dir, memo_data, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    config = make_config(tmp_path, tiny_model_dir, memo_data, "c")
    code, err = cli(["train", config, "--quiet", "--set", f"output.dir={blocker}"], capsys)
    assert code == 2 and f"output.dir {blocker} is a file, not a folder" in err and "Traceback" not in err
    # A folder below a file: the OS says "Not a directory" (NotADirectoryError from mkdir).
    code, err = cli(["train", config, "--set", f"output.dir={blocker}/run"], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{blocker}/run: Not a directory" in err.replace("\n", "")
    # --debug after the verb is accepted and shows the real exception.
    with pytest.raises(UserError, match="is a file"):
        main(["train", str(config), "--set", f"output.dir={blocker}", "--debug"])
    with pytest.raises(NotADirectoryError):
        main(["--debug", "train", str(config), "--set", f"output.dir={blocker}/run"])


def test_a_missing_metric_extra_fails_before_training(tmp_path, tiny_model_dir, memo_data, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # what an uninstalled package looks like to import
    cfg = make_config(tmp_path, tiny_model_dir, memo_data, "bleu", train={"max_steps": 2},
                      eval={"enabled": True, "metrics": ["bleu"], "data": str(memo_data)})
    with pytest.raises(ConfigError, match="bleu"):
        run(load_config(cfg, [f"output.dir={tmp_path / 'run'}"]), events=Events())
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no training time spent on a doomed run


def test_a_config_mistake_leaves_the_previous_run_in_place(tmp_path, tiny_model_dir, memo_data, monkeypatch):
    import sys

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    cfg = make_config(tmp_path, tiny_model_dir, memo_data, "bad", train={"max_steps": 2},
                      eval={"enabled": True, "metrics": ["bleu"], "data": str(memo_data)})
    with pytest.raises(ConfigError, match="bleu"):
        run(load_config(cfg, [f"output.dir={run_dir}"]), events=Events())
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'  # not cleared by a doomed run
