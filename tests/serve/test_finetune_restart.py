"""A server killed with SIGKILL mid-job: the restarted server resumes the job from its last checkpoint and
the adapter equals an uninterrupted run's. The server is the real `tunesmith serve` CLI in its own
process; everything is asked through the official `openai` client."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
from safetensors.torch import load_file

from tests.serve.test_finetune_api import chats, jsonl

KEY = "sk-restart"
REPO = Path(__file__).resolve().parents[2]
# Long enough (a few seconds of steps) that the kill lands mid-run, with checkpoints every 10 steps.
JOB = {"train.max_steps": "60", "train.save_every": "10", "data.max_len": "64", "train.precision": "fp32",
       "method.r": "4", "train.warmup_ratio": "0"}


class Server:
    def __init__(self, model_dir: Path, data_dir: Path):
        from tunesmith.serve.server import free_port

        self.port = free_port()
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", "--model", str(model_dir),
                                      "--served-model-name", "tiny", "--data-dir", str(data_dir), "--port", str(self.port),
                                      "--api-key", KEY], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=KEY, max_retries=0, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.client.models.list()
                return
            except openai.APIConnectionError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def events(client, job_id: str) -> list:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=200))


def finished(client, job_id: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, [e.message for e in events(client, job_id)[:5]]
        time.sleep(0.3)
    return job


def test_kill_9_mid_job_then_restart_resumes_to_the_uninterrupted_adapter(tiny_model_dir, tmp_path):
    from tunesmith.config import load_config
    from tunesmith.events import Events
    from tunesmith.pipeline import run
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, build_state

    data_dir = tmp_path / "service"
    server = Server(tiny_model_dir, data_dir)
    try:
        client = server.client
        file = client.files.create(file=("memo.jsonl", io.BytesIO(jsonl(chats(16)))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny", training_file=file.id, seed=11, metadata=JOB,
                                             hyperparameters={"batch_size": 4, "learning_rate_multiplier": 4})
        queued = client.fine_tuning.jobs.create(model="tiny", training_file=file.id, metadata=JOB)
        deadline = time.monotonic() + 120
        while not any(e.message == "Checkpoint created at step 20" for e in events(client, job.id)):
            assert time.monotonic() < deadline, [e.message for e in events(client, job.id)[:5]]
            time.sleep(0.05)
        server.kill()
    except BaseException:
        server.stop()
        raise

    # The worker died with the server: no step is written any more.
    def steps() -> int:
        import sqlite3

        with sqlite3.connect(data_dir / "tunesmith.sqlite") as db:
            return db.execute("SELECT COUNT(*) FROM events WHERE type = 'metrics'").fetchone()[0]

    time.sleep(1.0)
    before = steps()
    time.sleep(1.5)
    assert steps() == before < 60, "the worker outlived the server, or finished before the kill"

    # The next server (here in this process) over the same data folder.
    state = build_state(ServeOptions(model=str(tiny_model_dir), served_name="tiny", data_dir=str(data_dir), api_key=KEY))
    try:
        with BackgroundServer(state) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)
            assert client.fine_tuning.jobs.retrieve(queued.id).status == "queued"      # still waiting its turn
            client.fine_tuning.jobs.cancel(queued.id)
            done = finished(client, job.id)
            assert done.status == "succeeded", done.error
            messages = [e.message for e in events(client, job.id)]
            resumed = [m for m in messages if m.startswith("Resumed from the checkpoint of step")]
            assert len(resumed) == 1 and int(resumed[0].split()[-3]) >= 20, messages[:10]
            assert done.fine_tuned_model in [m.id for m in client.models.list().data]
    finally:
        state.close()

    # The uninterrupted run: the job's own run config, start to end in one go.
    run_dir = data_dir / "jobs" / job.id / "run"
    cfg = load_config(run_dir / "config.yaml")
    run(cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": str(tmp_path / "straight")})}), events=Events())
    resumed_adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    straight = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    assert resumed_adapter.keys() == straight.keys()
    for name, tensor in straight.items():
        assert (resumed_adapter[name] - tensor).abs().max().item() <= 1e-5, name
    assert max((t.abs().max().item() for k, t in straight.items() if "lora_B" in k)) > 1e-3   # it did train
