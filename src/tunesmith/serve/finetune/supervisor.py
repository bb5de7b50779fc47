"""The job queue of one server: starts a worker process per job, watches it, serves what it trained.

A thread of the server process. Every tick it reaps finished workers, kills the ones whose job was
cancelled or paused (if they have not stopped at their step's end already), and starts the oldest queued jobs while fewer than `job_workers` run. A job found
`running` with no worker (the server was stopped or killed while it trained) is started again and
resumes from its last checkpoint. When a worker has trained its job, the supervisor loads the
adapter (and the checkpoints) into the server's adapter table and only then marks the job
`succeeded`: the `ft:` model answers from the moment the status says so.

One spare worker waits with its imports done (torch, transformers, peft: most of a job's start-up),
so a job starts training seconds after it is queued; it gets its job id on stdin.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.serve.finetune.store import Store

log = logging.getLogger("tunesmith.serve.jobs")
TICK_S = 0.2


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the server dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: the worker's own parent check stops it at its next event


def checkpoint_model(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"


@dataclass
class Worker:
    job_id: str
    proc: subprocess.Popen
    log_path: Path


class Supervisor:
    def __init__(self, state, store: Store):
        self.state, self.store = state, store
        self.workers: dict[str, Worker] = {}
        # A worker that has done its imports (~20 s of a job's start) and waits for the next job.
        self.spare: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        # PR_SET_PDEATHSIG fires when the *thread* that started the child ends, so workers are only
        # ever started from this one long-lived thread.
        self.thread = threading.Thread(target=self._loop, name="tunesmith-jobs", daemon=True)

    def start(self) -> None:
        self.serve_finished_jobs()
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Stop the thread and the workers; their jobs stay `running` and resume on the next start."""
        self._stop.set()
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        for proc in [w.proc for w in self.workers.values()] + ([self.spare] if self.spare else []):
            proc.kill()
            proc.wait()
        self.workers.clear()
        self.spare = None

    # -- serving results ---------------------------------------------------------------------------
    def serve_finished_jobs(self) -> None:
        """At start-up: every succeeded job's model and checkpoints back in the adapter table."""
        for job in self.store.jobs_with_status("succeeded"):
            try:
                self._load_models(job)
            except Exception as exc:   # one damaged run folder must not keep the server from starting
                log.error("job %s: its model could not be loaded: %s", job["id"], exc)

    def _load_models(self, job: dict) -> None:
        name = job["fine_tuned_model"]
        adapter = Path(job["overrides"]["output"]["dir"]) / "adapter"
        if name not in self.state.adapters:
            self.state.load_adapter(name, adapter, owner=job["org"])
        for ckpt in self.store.checkpoints(job["id"]):
            model = checkpoint_model(name, ckpt["step"])
            if ckpt["adapter"] and model not in self.state.adapters:
                self.state.load_adapter(model, ckpt["adapter"], owner=job["org"])

    def _succeed(self, job: dict) -> None:
        from tunesmith.serve.finetune.job_spec import fine_tuned_name

        name = fine_tuned_name(self.state.base_name, job)
        self.store.update_job(job["id"], fine_tuned_model=name)
        job = self.store.job(job["id"])
        try:
            self._load_models(job)
        except Exception as exc:
            self.state.unload_models(name)           # the checkpoints that did load, if any
            self.store.update_job(job["id"], fine_tuned_model=None)
            self._fail(job, "model_load_failed", f"the trained adapter could not be served: {exc}")
            return
        if self.store.update_job(job["id"], only_if=("running",), status="succeeded", finished_at=int(time.time())):
            self.store.add_event(job["id"], "The job has successfully completed", data={"fine_tuned_model": name})
        else:   # cancelled or paused while the adapter was loading
            self.state.unload_models(name)
            self.store.update_job(job["id"], fine_tuned_model=None)

    def _fail(self, job: dict, code: str, message: str) -> None:
        error = job.get("error") or {"code": code, "message": message, "param": None}
        if self.store.update_job(job["id"], only_if=("running",), status="failed", error=error,
                                 finished_at=int(time.time()), estimated_finish=None):
            self.store.add_event(job["id"], f"The job failed: {error['message']}", level="error")

    # -- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:       # the queue must outlive one bad tick (a locked database, a full disk)
                log.exception("job supervisor tick failed")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def tick(self) -> None:
        for job_id, worker in list(self.workers.items()):
            job = self.store.job(job_id)
            if job["status"] != "running":          # cancelled or paused
                worker.proc.kill()
                worker.proc.wait()
                del self.workers[job_id]
                continue
            code = worker.proc.poll()
            if code is None:
                continue
            del self.workers[job_id]
            if code == 0 and job["trained"]:
                self._succeed(job)
            else:
                # The log's path stays on the server: a tenant's error names no server folders.
                log.warning("job %s: worker exited with code %s; log: %s", job_id, code, worker.log_path)
                self._fail(job, "worker_failed", f"the training process exited with code {code}; the server's "
                                                 f"jobs/{job_id}/worker.log has the details")
        self._start_jobs()
        self._keep_spare()

    def _start_jobs(self) -> None:
        capacity = self.state.options.job_workers - len(self.workers)
        if capacity <= 0:
            return
        # Jobs left running by a previous server first (they resume), then the queue in order.
        orphans = [j for j in self.store.jobs_with_status("running") if j["id"] not in self.workers]
        for job in orphans:
            if job["trained"]:
                self._succeed(job)
            elif capacity > 0:
                self.store.add_event(job["id"], "The server restarted; resuming the job from its last checkpoint")
                self._spawn(job)
                capacity -= 1
        for job in self.store.jobs_with_status("queued")[:max(0, capacity)]:
            if not self.store.update_job(job["id"], only_if=("queued",), status="running"):
                continue
            if job["trained"]:          # paused after training had finished: nothing left to train
                self._succeed(job)
            else:
                self.store.add_event(job["id"], "Fine-tuning job started")
                self._spawn(job)

    def _spawn(self, job: dict) -> None:
        folder = self.store.job_dir(job["id"])
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "worker.log"
        proc = self._hand_to_spare(job["id"])
        if proc is None:
            with open(log_path, "ab") as log_file:
                proc = self._popen([job["id"]], stdout=log_file)
        self.workers[job["id"]] = Worker(job["id"], proc, log_path)

    def _popen(self, args: list[str], stdout, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        command = [sys.executable, "-m", "tunesmith.serve.finetune.worker"]
        if args[0] == "--spare":
            command += ["--spare", str(self.store.root), str(os.getpid())]
        else:
            command += [str(self.store.root), args[0], str(os.getpid())]
        return subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT, stdin=stdin,
                                preexec_fn=_die_with_parent, env=self._worker_env())

    def _hand_to_spare(self, job_id: str) -> subprocess.Popen | None:
        spare, self.spare = self.spare, None
        if spare is None or spare.poll() is not None:
            return None
        try:
            spare.stdin.write(f"{job_id}\n".encode())
            spare.stdin.close()
        except OSError:          # it died just now
            spare.kill()
            return None
        return spare

    def _keep_spare(self) -> None:
        if self.state.options.job_workers <= 0 or self._stop.is_set():
            return
        if self.spare is not None and self.spare.poll() is None:
            return
        log_path = self.store.root / "jobs" / "spare-worker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            self.spare = self._popen(["--spare"], stdout=log_file, stdin=subprocess.PIPE)

    @staticmethod
    def _worker_env() -> dict:
        env = dict(os.environ)
        # The worker imports this same tunesmith, wherever it was imported from.
        src = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        return env
