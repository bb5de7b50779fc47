"""The fine-tuning service's state: one SQLite file under the server's data folder.

Tables: organizations (name and a hash of their key), files, jobs, events and checkpoints. The
HTTP process and the job worker processes open the same file; WAL mode lets a worker append events
while the server reads them. Rows keep an integer `seq` (insertion order) besides their OpenAI id,
so lists page newest first with an `after` cursor exactly as OpenAI's do.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import string
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS organizations (
    name TEXT PRIMARY KEY, key_sha256 TEXT, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, org TEXT NOT NULL,
    filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
    path TEXT NOT NULL, format TEXT, records INTEGER, deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, org TEXT NOT NULL,
    created_at INTEGER NOT NULL, status TEXT NOT NULL, request TEXT NOT NULL, overrides TEXT NOT NULL,
    fine_tuned_model TEXT, finished_at INTEGER, error TEXT, trained_tokens INTEGER,
    estimated_finish INTEGER, result_files TEXT NOT NULL DEFAULT '[]', trained INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, type TEXT NOT NULL, message TEXT NOT NULL, data TEXT);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, step INTEGER NOT NULL, metrics TEXT NOT NULL, adapter TEXT,
    UNIQUE (job_id, step));
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE INDEX IF NOT EXISTS jobs_by_org ON jobs (org, seq);
CREATE INDEX IF NOT EXISTS files_by_org ON files (org, seq);
"""

# Statuses of OpenAI's fine_tuning.job: unfinished ones (they count against max_queued_jobs and keep
# their files from deletion) and final ones.
ACTIVE = ("validating_files", "queued", "running", "paused")
FINAL = ("succeeded", "failed", "cancelled")

_ALPHABET = string.ascii_letters + string.digits
JSON_COLUMNS = {"request", "overrides", "error", "result_files", "metrics", "data"}


def new_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(n))


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _row(cursor: sqlite3.Cursor, values: tuple) -> dict:
    row = {}
    for (name, *_), value in zip(cursor.description, values):
        row[name] = json.loads(value) if name in JSON_COLUMNS and value is not None else value
    return row


class Store:
    """Thread-safe access to the service's SQLite file (one connection, one lock per instance)."""

    FILE = "tunesmith.sqlite"

    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.root / self.FILE, check_same_thread=False, timeout=30, isolation_level=None)
        self.db.row_factory = _row
        self._lock = threading.Lock()
        with self._lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA busy_timeout=30000")
            self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- folders -------------------------------------------------------------------------------
    @property
    def files_dir(self) -> Path:
        return self.root / "files"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def disk_bytes(self) -> int:
        """Bytes under the data folder (files, runs, the database): what max_data_bytes limits."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file() and not p.is_symlink())

    # -- plumbing ------------------------------------------------------------------------------
    def _all(self, sql: str, args: tuple = ()) -> list[dict]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def _one(self, sql: str, args: tuple = ()) -> dict | None:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def _run(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            return self.db.execute(sql, args).rowcount

    def _insert(self, table: str, values: dict) -> None:
        values = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in values.items()}
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        self._run(f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(values.values()))

    def _update(self, table: str, row_id: str, values: dict, where: str = "", args: tuple = ()) -> int:
        values = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in values.items()}
        sets = ", ".join(f"{k} = ?" for k in values)
        return self._run(f"UPDATE {table} SET {sets} WHERE id = ? {where}", (*values.values(), row_id, *args))

    def _page(self, table: str, where: str, args: tuple, after: str | None, limit: int,
              order: str = "desc") -> tuple[list[dict], bool]:
        """Newest first (order="asc": oldest first); `after`: the id of the last row of the previous page."""
        newer = order == "asc"
        if after:
            cursor = self._one(f"SELECT seq FROM {table} WHERE id = ? AND {where}", (after, *args))
            if cursor is None:
                return [], False
            where, args = f"{where} AND seq {'>' if newer else '<'} ?", (*args, cursor["seq"])
        rows = self._all(f"SELECT * FROM {table} WHERE {where} ORDER BY seq {'ASC' if newer else 'DESC'} LIMIT ?",
                         (*args, limit + 1))
        return rows[:limit], len(rows) > limit

    # -- organizations ---------------------------------------------------------------------------
    def register_orgs(self, keys: dict[str, str]) -> None:
        """Record each organization and the hash of its current key (org -> key)."""
        now = int(time.time())
        for org, key in keys.items():
            self._run("INSERT INTO organizations (name, key_sha256, created_at) VALUES (?, ?, ?) "
                      "ON CONFLICT(name) DO UPDATE SET key_sha256 = excluded.key_sha256", (org, key_hash(key), now))

    def orgs(self) -> list[str]:
        return [r["name"] for r in self._all("SELECT name FROM organizations ORDER BY name")]

    # -- files -----------------------------------------------------------------------------------
    def add_file(self, **row) -> dict:
        self._insert("files", {"created_at": int(time.time()), **row})
        return self.file(row["id"], row["org"])

    def file(self, file_id: str, org: str) -> dict | None:
        return self._one("SELECT * FROM files WHERE id = ? AND org = ? AND deleted = 0", (file_id, org))

    def list_files(self, org: str, purpose: str | None, after: str | None, limit: int,
                   order: str = "desc") -> tuple[list[dict], bool]:
        where, args = "org = ? AND deleted = 0", (org,)
        if purpose:
            where, args = f"{where} AND purpose = ?", (org, purpose)
        return self._page("files", where, args, after, limit, order)

    def delete_file(self, file_id: str, org: str) -> bool:
        return self._run("UPDATE files SET deleted = 1 WHERE id = ? AND org = ? AND deleted = 0", (file_id, org)) > 0

    # -- jobs ------------------------------------------------------------------------------------
    def add_job(self, **row) -> dict:
        self._insert("jobs", {"created_at": int(time.time()), **row})
        return self.job(row["id"])

    def job(self, job_id: str, org: str | None = None) -> dict | None:
        if org is None:
            return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return self._one("SELECT * FROM jobs WHERE id = ? AND org = ?", (job_id, org))

    def list_jobs(self, org: str, after: str | None, limit: int,
                  metadata: dict[str, str] | None = None) -> tuple[list[dict], bool]:
        """`metadata`: only jobs whose metadata has each of these key/value pairs."""
        where, args = "org = ?", (org,)
        for key, value in (metadata or {}).items():
            where += " AND json_extract(request, ?) = ?"
            args += (f'$.metadata."{key}"', value)
        return self._page("jobs", where, args, after, limit)

    def jobs_with_status(self, *statuses: str) -> list[dict]:
        marks = ", ".join("?" for _ in statuses)
        return self._all(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses)

    def active_jobs(self, org: str) -> int:
        marks = ", ".join("?" for _ in ACTIVE)
        return self._one(f"SELECT COUNT(*) AS n FROM jobs WHERE org = ? AND status IN ({marks})", (org, *ACTIVE))["n"]

    def update_job(self, job_id: str, *, only_if: tuple[str, ...] = (), **values) -> bool:
        """Set `values` on the job; with `only_if`, only while its status is one of those (False otherwise)."""
        if only_if:
            marks = ", ".join("?" for _ in only_if)
            return self._update("jobs", job_id, values, f"AND status IN ({marks})", only_if) > 0
        return self._update("jobs", job_id, values) > 0

    # -- events and checkpoints --------------------------------------------------------------------
    def add_event(self, job_id: str, message: str, *, level: str = "info", type: str = "message",
                  data: dict | None = None) -> None:
        self._insert("events", {"id": new_id("ftevent-"), "job_id": job_id, "created_at": int(time.time()),
                                "level": level, "type": type, "message": message, "data": data})

    def list_events(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        return self._page("events", "job_id = ?", (job_id,), after, limit)

    def add_checkpoint(self, job_id: str, step: int, metrics: dict) -> None:
        self._run("INSERT OR IGNORE INTO checkpoints (id, job_id, created_at, step, metrics) VALUES (?, ?, ?, ?, ?)",
                  (new_id("ftckpt_"), job_id, int(time.time()), step, json.dumps(metrics)))

    def set_checkpoint_adapter(self, job_id: str, step: int, adapter: str) -> None:
        self._run("UPDATE checkpoints SET adapter = ? WHERE job_id = ? AND step = ?", (adapter, job_id, step))

    def checkpoints(self, job_id: str) -> list[dict]:
        return self._all("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step", (job_id,))

    def drop_checkpoints_except(self, job_id: str, steps: list[int]) -> None:
        """Forget checkpoints the trainer pruned from disk (keep_checkpoints)."""
        marks = ", ".join("?" for _ in steps) or "NULL"
        self._run(f"DELETE FROM checkpoints WHERE job_id = ? AND step NOT IN ({marks})", (job_id, *steps))

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        return self._page("checkpoints", "job_id = ? AND adapter IS NOT NULL", (job_id,), after, limit)
