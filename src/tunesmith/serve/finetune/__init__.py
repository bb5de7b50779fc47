"""The OpenAI-compatible fine-tuning service on `tunesmith serve --data-dir`: files, jobs, events,
checkpoints in SQLite (store.py), a job per worker process (worker.py) under a queue (supervisor.py)."""
