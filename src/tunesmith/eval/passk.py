"""pass@k for code: sample n programs per task, run each against the task's tests in the sandbox.

pass@k is the chance that at least one of k programs drawn from the n passes. With c of n passing,
the unbiased estimator (Chen et al., 2021) is 1 - C(n-c, k) / C(n, k); it is computed as a product
so large n never overflows, and averaged over tasks.

A task file is JSONL, one task a line: `prompt` (what the model is asked), `test` (Python that
raises if the program is wrong, e.g. asserts), optional `entry_point` (the function name; when set,
`check(<entry_point>)` is called after the test code, HumanEval-style) and `id`.

A program passes only if it runs to its last line (the tests come last) and exits 0: the sandbox
proves the end was reached with a per-run token, so a reply that calls sys.exit(0) or os._exit(0)
before the tests, or exits 0 from an atexit hook after one fails, scores as a failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ConfigError, DataError
from tunesmith.eval.sandbox import RunOutcome, SandboxLimits, run_python


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed."""
    if not 0 <= c <= n:
        raise ValueError(f"passed count {c} must lie in [0, {n}]")
    if k > n:
        raise ConfigError(f"pass@{k} needs at least {k} samples per task, got {n}",
                          hint="raise eval.code_samples or lower eval.pass_k")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


@dataclass
class CodeTask:
    id: str
    prompt: str
    test: str
    entry_point: str | None = None

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}]


def load_code_tasks(path: str | Path) -> list[CodeTask]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"code task file not found: {path}", hint="pass a JSONL file with prompt and test fields")
    tasks = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object with prompt and test")
        for key in ("prompt", "test"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise DataError(f"{path}:{line_no}: {key}: missing or empty",
                                hint="each task needs a non-empty string prompt and test (Python that raises when wrong)")
        entry = rec.get("entry_point")
        if entry is not None and not (isinstance(entry, str) and entry.isidentifier()):
            raise DataError(f"{path}:{line_no}: entry_point: must be a Python identifier, got {entry!r}")
        tasks.append(CodeTask(str(rec.get("id", f"{path.name}:{line_no}")), rec["prompt"], rec["test"], entry))
    if not tasks:
        raise DataError(f"{path}: no tasks", hint="one JSON object per line with prompt and test")
    return tasks


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def extract_code(prediction: str) -> str:
    """The program in a reply: the first fenced block if there is one, else the whole reply."""
    m = _FENCE.search(prediction)
    return m.group(1) if m else prediction


def program(task: CodeTask, prediction: str) -> str:
    parts = [extract_code(prediction), task.test]
    if task.entry_point:
        parts.append(f"check({task.entry_point})")
    return "\n\n".join(parts) + "\n"


@dataclass
class TaskResult:
    id: str
    n: int
    passed: int
    statuses: list[str]


def run_programs(programs: list[str], limits: SandboxLimits, workers: int = 1,
                 progress: Callable[[int], None] | None = None) -> list[RunOutcome]:
    """Outcomes in the order of `programs`; `progress(1)` after each (from worker threads when workers > 1)."""
    def run(p: str) -> RunOutcome:
        outcome = run_python(p, limits)
        if progress is not None:
            progress(1)
        return outcome

    if workers <= 1:
        return [run(p) for p in programs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, programs))


def score_tasks(tasks: list[CodeTask], completions: list[list[str]], ks: list[int], limits: SandboxLimits,
                workers: int = 1, progress: Callable[[int], None] | None = None) -> tuple[dict[str, float], list[TaskResult]]:
    """pass@k per k (mean over tasks) and the per-task pass counts, from n completions per task."""
    flat = [program(t, c) for t, cs in zip(tasks, completions) for c in cs]
    outcomes = iter(run_programs(flat, limits, workers, progress))
    results = []
    for task, cs in zip(tasks, completions):
        runs = [next(outcomes) for _ in cs]
        results.append(TaskResult(task.id, len(cs), sum(r.passed for r in runs), [r.status for r in runs]))
    scores = {f"pass@{k}": sum(pass_at_k(r.n, r.passed, k) for r in results) / len(results) for k in ks}
    return scores, results
