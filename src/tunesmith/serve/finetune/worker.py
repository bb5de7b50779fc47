"""One fine-tuning job, in a process of its own: `python -m tunesmith.serve.finetune.worker DATA_DIR JOB_ID`.

The server's supervisor starts it; it runs the job's run config through the ordinary pipeline and
turns the run's events into the job's events and checkpoints in the SQLite store. It resumes from
the run folder's last checkpoint when there is one (a server that died mid-job), so the result is
the one an uninterrupted run would have given.

On success it writes what the server serves next: each kept checkpoint as an adapter folder of
its own, the step/loss CSV (and the eval report) as result files, `trained = 1`. The server, not
this process, loads the adapter and marks the job `succeeded`, so a job is never reported done
before its model answers.

A cancelled job stops at the end of the step in progress (each step's event checks the job's
status). The process dies with the server: the supervisor asks the kernel for that (PR_SET_PDEATHSIG), and
every event also checks that the parent is still the one that started it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from tunesmith.events import CheckpointSaved, Message, StepMetrics, TrainFinished, TrainStarted
from tunesmith.serve.finetune.store import Store, new_id

CHECKPOINT_ADAPTERS = "checkpoint-adapters"
# OpenAI's metric names for the ones a metrics.jsonl row holds.
METRIC_NAMES = {"loss": "train_loss", "val_loss": "valid_loss", "lr": "learning_rate",
                "grad_norm": "grad_norm", "tokens_per_s": "tokens_per_s", "epoch": "epoch"}


def openai_metrics(row: dict) -> dict:
    return {new: row[old] for old, new in METRIC_NAMES.items() if row.get(old) is not None}


class JobListener:
    """Run events -> job events, checkpoints and the estimated finish in the store."""

    def __init__(self, store: Store, job_id: str, parent: int):
        self.store, self.job_id, self.parent = store, job_id, parent
        self.last_metrics: dict = {}
        self.started = time.time()
        self.start_step = 0

    def __call__(self, event) -> None:
        if os.getppid() != self.parent:     # the server is gone: stop here, the next one resumes
            os._exit(3)
        add = self.store.add_event
        if isinstance(event, Message):
            add(self.job_id, event.text, level="warn" if event.level == "warning" else "info")
        elif isinstance(event, TrainStarted):
            self.started, self.start_step = time.time(), event.start_step
            text = (f"Resumed from the checkpoint of step {event.start_step} of {event.total_steps}"
                    if event.start_step else f"Fine-tuning started: {event.total_steps} steps")
            add(self.job_id, text, data={"total_steps": event.total_steps, "start_step": event.start_step})
        elif isinstance(event, StepMetrics):
            if self.store.job(self.job_id)["status"] != "running":
                # Cancelled: stop before the next step. Every output is written atomically, so nothing
                # is left half-written; the supervisor reaps the process.
                os._exit(4)
            metrics = openai_metrics(event.metrics)
            self.last_metrics = {"step": event.step, **metrics}
            add(self.job_id, f"Step {event.step}/{event.total_steps}: training loss={event.metrics['loss']:.4f}",
                type="metrics", data={"step": event.step, "total_steps": event.total_steps, **metrics})
            done = event.step - self.start_step
            per_step = (time.time() - self.started) / max(1, done)
            self.store.update_job(self.job_id, estimated_finish=int(time.time() + per_step * (event.total_steps - event.step)))
        elif isinstance(event, CheckpointSaved):
            metrics = dict(self.last_metrics) if self.last_metrics.get("step") == event.step else {"step": event.step}
            self.store.add_checkpoint(self.job_id, event.step, metrics)
            add(self.job_id, f"Checkpoint created at step {event.step}", data={"step": event.step})
        elif isinstance(event, TrainFinished):
            add(self.job_id, f"Training finished after {event.steps} steps", data={"steps": event.steps})


def checkpoint_adapter(checkpoint: Path, final_adapter: Path, out: Path) -> bool:
    """Write `checkpoint` (trainable weights under peft's in-model names) as an adapter folder laid out
    like `final_adapter`. False when the names do not map one to one (a method whose trainable
    state is not its adapter file): that checkpoint is then not served."""
    import shutil

    from safetensors.torch import load_file, save_file

    from tunesmith.io_utils import atomic_dir

    weights = final_adapter / "adapter_model.safetensors"
    if not weights.is_file() or not (checkpoint / "trainable.safetensors").is_file():
        return False
    wanted = set(load_file(str(weights)))
    # peft names a parameter `...lora_A.default.weight` in the model and `...lora_A.weight` in the file.
    state = {k.replace(".default.", "."): v for k, v in load_file(str(checkpoint / "trainable.safetensors")).items()}
    if set(state) != wanted:
        return False
    with atomic_dir(out) as tmp:
        for item in final_adapter.iterdir():
            if item.is_file() and item.name != "adapter_model.safetensors":
                shutil.copy2(item, tmp / item.name)
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    return True


def results_csv(metrics_file: Path) -> str:
    """OpenAI's result file: one row per logged step."""
    columns = ["step", "train_loss", "valid_loss", "learning_rate", "tokens_per_s"]
    lines = [",".join(columns)]
    if metrics_file.is_file():
        for raw in metrics_file.read_text(encoding="utf-8").splitlines():
            row = json.loads(raw)
            if "loss" not in row:
                continue
            values = {"step": row["step"], **openai_metrics(row)}
            lines.append(",".join("" if values.get(c) is None else f"{values[c]:.6g}" if isinstance(values[c], float)
                                  else str(values[c]) for c in columns))
    return "\n".join(lines) + "\n"


def trained_tokens(run_dir: Path, steps: int, batch_size: int) -> int:
    """Tokens of the training set times the epochs trained (OpenAI's `trained_tokens`)."""
    stats = json.loads((run_dir / "data_stats.json").read_text(encoding="utf-8"))["train"]
    per_epoch = math.ceil(stats["examples"] / batch_size)
    return int(stats["tokens"] * steps / max(1, per_epoch))


def add_result_file(store: Store, job: dict, name: str, content: bytes) -> str:
    file_id = new_id("file-")
    path = store.files_dir / f"{file_id}{Path(name).suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    store.add_file(id=file_id, org=job["org"], filename=name, purpose="fine-tune-results", bytes=len(content),
                   path=str(path), format=None, records=None)
    return file_id


def finish(store: Store, job: dict, run_dir: Path, result, final_metrics: dict) -> None:
    """Checkpoints as adapters, result files, `trained = 1`: everything the server needs to serve the job."""
    from tunesmith.run_dir import CHECKPOINT_NAME
    from tunesmith.train.checkpoint import list_checkpoints

    job_id = job["id"]
    adapter = run_dir / "adapter"
    final_step = result.train.steps
    kept = {int(CHECKPOINT_NAME.match(p.name).group(1)): p for p in list_checkpoints(run_dir / "checkpoints")}
    store.drop_checkpoints_except(job_id, [*kept, final_step])
    for step, path in kept.items():
        store.add_checkpoint(job_id, step, {"step": step})      # a checkpoint from before a restart has its row already
        out = store.job_dir(job_id) / CHECKPOINT_ADAPTERS / path.name
        if step != final_step and checkpoint_adapter(path, adapter, out):
            store.set_checkpoint_adapter(job_id, step, str(out))
    # As at OpenAI, the last checkpoint is the finished model itself.
    store.add_checkpoint(job_id, final_step, final_metrics if final_metrics.get("step") == final_step else {"step": final_step})
    store.set_checkpoint_adapter(job_id, final_step, str(adapter))
    files = [add_result_file(store, job, "step_metrics.csv", results_csv(run_dir / "metrics.jsonl").encode())]
    for report in ("report.json", "report.md"):
        if (run_dir / report).is_file():
            files.append(add_result_file(store, job, report, (run_dir / report).read_bytes()))
    tokens = trained_tokens(run_dir, result.train.steps, job["overrides"]["train"]["batch_size"])
    store.update_job(job_id, trained=1, trained_tokens=tokens, result_files=files, estimated_finish=None)


def run_job(data_dir: str, job_id: str, parent: int) -> int:
    from tunesmith.config import validate
    from tunesmith.errors import UserError
    from tunesmith.events import Events
    from tunesmith.pipeline import run
    from tunesmith.train.checkpoint import list_checkpoints

    store = Store(data_dir)
    job = store.job(job_id)
    cfg = validate(job["overrides"], f"job {job_id}")
    run_dir = Path(cfg.output.dir)
    resume = bool(list_checkpoints(run_dir / "checkpoints"))
    try:
        listener = JobListener(store, job_id, parent)
        result = run(cfg, resume=resume, events=Events(listener))
        finish(store, job, run_dir, result, listener.last_metrics)
    except UserError as exc:
        store.update_job(job_id, error={"code": "invalid_training_data", "message": exc.message, "param": None})
        return 1
    except Exception as exc:
        store.update_job(job_id, error={"code": "server_error", "message": f"{type(exc).__name__}: {exc}", "param": None})
        raise
    return 0


def warm_up() -> None:
    """Import what every job needs (torch, transformers, peft, the methods): most of a job's start-up."""
    import transformers  # noqa: F401
    from accelerate import Accelerator  # noqa: F401
    from peft import get_peft_model  # noqa: F401

    # Their lazy imports; Llama is the default model's architecture.
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: F401

    import tunesmith.data.tokenize  # noqa: F401
    import tunesmith.pipeline  # noqa: F401
    import tunesmith.train.objectives  # noqa: F401
    import tunesmith.train.trainer  # noqa: F401
    from tunesmith.methods import METHODS

    METHODS.get("lora")     # the first look-up imports every method module


def spare(data_dir: str, parent: int) -> int:
    """A warmed-up worker waiting for its job: one job id on stdin (EOF: not needed, exit). Its output
    goes to that job's worker.log from then on."""
    warm_up()
    job_id = sys.stdin.readline().strip()
    if not job_id:
        return 0
    log = Store(data_dir).job_dir(job_id) / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return run_job(data_dir, job_id, parent)


def main(argv: list[str]) -> int:
    """`DATA_DIR JOB_ID PARENT_PID`: run that job; `--spare DATA_DIR PARENT_PID`: warm up, then wait for one."""
    if argv[0] == "--spare":
        return spare(argv[1], int(argv[2]))
    data_dir, job_id, parent = argv[0], argv[1], int(argv[2])
    return run_job(data_dir, job_id, parent)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
