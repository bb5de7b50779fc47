"""pass@k equals the closed form; hostile programs are stopped, contained and scored as failures."""

from __future__ import annotations

import json
import math
import os
import socket
import time

import pytest

from tunesmith.errors import ConfigError, DataError
from tunesmith.eval.passk import CodeTask, extract_code, load_code_tasks, pass_at_k, program, score_tasks
from tunesmith.eval.sandbox import SandboxLimits, landlock_abi, network_namespace_available, run_python

LIMITS = SandboxLimits(timeout_s=2.0, memory_mb=256)


@pytest.mark.parametrize("n,c,k", [(10, 0, 1), (10, 3, 1), (10, 3, 5), (10, 7, 5), (20, 1, 10), (5, 5, 5),
                                   (200, 13, 1), (200, 13, 10), (200, 13, 100), (1, 1, 1), (1, 0, 1)])
def test_pass_at_k_equals_closed_form(n, c, k):
    expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_1_is_the_pass_fraction_and_k_over_n_is_an_error():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    with pytest.raises(ConfigError, match="pass@6"):
        pass_at_k(5, 2, 6)


def test_score_tasks_on_known_programs():
    tasks = [CodeTask("add", "write add", "assert add(2, 3) == 5\nassert add(-1, 1) == 0"),
             CodeTask("sq", "write square", "def check(f):\n    assert f(4) == 16", entry_point="square")]
    good_add, bad_add = "def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b"
    good_sq = "Here you go:\n```python\ndef square(x):\n    return x * x\n```\nDone."
    bad_sq = "def square(x):\n    return x + x"
    completions = [[good_add, bad_add, good_add, bad_add, bad_add], [bad_sq, bad_sq, good_sq, bad_sq, "syntax error ("]]
    scores, results = score_tasks(tasks, completions, [1, 2, 5], LIMITS)
    assert [(r.n, r.passed) for r in results] == [(5, 2), (5, 1)]
    for k in (1, 2, 5):
        assert scores[f"pass@{k}"] == pytest.approx((pass_at_k(5, 2, k) + pass_at_k(5, 1, k)) / 2)
    assert scores["pass@1"] == pytest.approx((2 / 5 + 1 / 5) / 2)


def test_extract_code_and_program():
    assert extract_code("```py\nx = 1\n```") == "x = 1\n"
    assert extract_code("x = 2") == "x = 2"
    task = CodeTask("t", "p", "def check(f):\n    assert f() == 1", entry_point="g")
    assert program(task, "def g():\n    return 1").endswith("check(g)\n")


def test_code_task_file_errors_name_the_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"prompt": "p", "test": "assert True"}) + "\n" + json.dumps({"prompt": "q"}) + "\n")
    with pytest.raises(DataError, match=r"tasks.jsonl:2: test: missing"):
        load_code_tasks(path)
    path.write_text(json.dumps({"prompt": "p", "test": "assert True", "entry_point": "not valid"}) + "\n")
    with pytest.raises(DataError, match=r"tasks.jsonl:1: entry_point"):
        load_code_tasks(path)


def test_passing_and_failing_programs():
    ok = run_python("import json\nassert json.loads('[1]') == [1]\nprint('fine')", LIMITS)
    assert ok.passed and ok.status == "passed" and ok.stdout.strip() == "fine"
    bad = run_python("assert 1 == 2", LIMITS)
    assert not bad.passed and bad.status == "failed" and "AssertionError" in bad.stderr


def test_infinite_loop_is_killed_at_the_time_limit():
    start = time.monotonic()
    out = run_python("while True:\n    pass", LIMITS)
    assert not out.passed and out.status == "timeout"
    assert time.monotonic() - start < LIMITS.timeout_s + 2.0


def test_sleeping_program_is_killed_at_the_wall_clock_limit():
    out = run_python("import time\ntime.sleep(60)", LIMITS)
    assert out.status == "timeout" and out.elapsed_s < LIMITS.timeout_s + 2.0


def test_network_call_cannot_reach_a_listening_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(1.0)
    port = server.getsockname()[1]
    try:
        # Straight socket use, and a route around the socket module's audited entry points.
        for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')",
                     f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)",
                     f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))"):
            out = run_python(code, LIMITS)
            assert not out.passed, code
            with pytest.raises(socket.timeout):
                conn, _ = server.accept()
                conn.close()
    finally:
        server.close()


@pytest.mark.skipif(not network_namespace_available(), reason="kernel does not allow user network namespaces")
def test_network_namespace_has_no_route_even_without_the_audit_hook():
    # Probe the kernel layer on its own: a plain child in the same namespace setup, no hook.
    import subprocess
    import sys

    from tunesmith.eval.sandbox import _child_setup

    code = "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 80))"
    done = subprocess.run([sys.executable, "-c", code], preexec_fn=_child_setup(LIMITS, True),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "unreachable" in done.stderr.lower()


def test_fork_bomb_is_stopped():
    before = len(os.listdir("/proc"))
    for code in ("import os\nwhile True:\n    os.fork()",
                 "import subprocess, sys\nwhile True:\n    subprocess.Popen([sys.executable, '-c', 'pass'])",
                 "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()",
                 "import os\nos.system('sleep 100 &')"):
        start = time.monotonic()
        out = run_python(code, LIMITS)
        assert not out.passed, code
        assert time.monotonic() - start < LIMITS.timeout_s + 2.0
    # Nothing left running: the process table is back to (about) where it was.
    assert len(os.listdir("/proc")) <= before + 5


def test_write_outside_the_working_folder_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
                 f"import os\nos.chdir('/')\nopen({str(target.relative_to('/'))!r}, 'w').write('x')",
                 f"import os\nos.remove({str(victim)!r})",
                 f"import shutil\nshutil.copy({str(victim)!r}, {str(target)!r})",
                 f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link', 'w').write('x')"):
        out = run_python(code, LIMITS)
        assert not out.passed, code
        assert not target.exists(), code
        assert victim.read_text() == "precious", code
    # Inside its own folder a program may write freely.
    ok = run_python("import os\nos.mkdir('d')\nopen('d/f.txt', 'w').write('x')\nassert open('d/f.txt').read() == 'x'", LIMITS)
    assert ok.passed, ok.stderr


def test_memory_hog_and_output_flood_fail_within_limits():
    hog = run_python("x = bytearray(1024 ** 3)", LIMITS)
    assert not hog.passed and "MemoryError" in hog.stderr
    flood = run_python("while True:\n    print('x' * 4096)", SandboxLimits(timeout_s=5.0, file_mb=1))
    assert not flood.passed and flood.elapsed_s < 5.0


ADD_TASK = CodeTask("add", "write add", "assert add(2, 3) == 5\nassert add(-1, 1) == 0")
# Each exits with status 0 although add is wrong or its tests never finish: the old "exit 0 = pass" hole.
EARLY_EXITS = {
    "sys.exit before the tests": "import sys\ndef add(a, b):\n    return a - b\nsys.exit(0)",
    "os._exit before the tests": "import os\ndef add(a, b):\n    return a - b\nos._exit(0)",
    "SystemExit(0) in the middle of the tests": "def add(a, b):\n    raise SystemExit(0)",
    "atexit hook exits 0 after a failed test": "import atexit, os\natexit.register(os._exit, 0)\ndef add(a, b):\n    return a - b",
    "exit() builtin before the tests": "def add(a, b):\n    return a + b\nexit()",
}


def test_exiting_0_before_the_tests_complete_is_a_failure():
    for name, code in EARLY_EXITS.items():
        out = run_python(program(ADD_TASK, code), LIMITS)
        assert out.returncode == 0, name  # the exit status alone would have called it a pass
        assert not out.passed and out.status == "failed", name
        assert "did not run to its last line" in out.stderr, name
    good = "def add(a, b):\n    return a + b"
    scores, results = score_tasks([ADD_TASK], [[*EARLY_EXITS.values(), good]], [1], LIMITS)
    assert results[0].statuses == ["failed"] * len(EARLY_EXITS) + ["passed"]
    assert scores["pass@1"] == pytest.approx(1 / (len(EARLY_EXITS) + 1))


def test_the_program_cannot_read_the_completion_token_from_its_inputs():
    # stdin was the token's way in; by the time the program runs it is /dev/null; argv and the environment are plain.
    code = ("import os, sys\nassert sys.stdin.read() == ''\nassert sys.argv == ['-c']\n"
            "assert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_CTYPE'}\nprint('ok')")
    out = run_python(code, LIMITS)
    assert out.passed, out.stderr
    assert out.stdout == "ok\n"  # the token goes to its own pipe, never into the program's output


SHM_NAME = f"tunesmith-test-{os.getpid()}"


def c_writer_programs(outside) -> dict[str, str]:
    """Writes outside the folder through C code that raises no "open" audit event."""
    db = str(outside / "x.db")
    return {
        "sqlite3.connect": f"import sqlite3\nsqlite3.connect({db!r}).execute('create table t(a)')",
        "sqlite3 file: URI": f"import sqlite3\nsqlite3.connect('file:' + {db!r} + '?mode=rwc', uri=True).execute('create table t(a)')",
        "sqlite3 ATTACH": (f"import sqlite3\nc = sqlite3.connect(':memory:')\nc.execute('attach database ? as x', ({db!r},))\n"
                           "c.execute('create table x.t(a)')"),
        "sqlite3 VACUUM INTO": (f"import sqlite3\nc = sqlite3.connect(':memory:')\nc.execute('create table t(a)')\n"
                                f"c.execute('vacuum into ?', ({db!r},))"),
        "_sqlite3 directly": f"import _sqlite3\n_sqlite3.connect({db!r}).execute('create table t(a)')",
        "dbm": f"import dbm\nwith dbm.open({str(outside / 'd')!r}, 'c') as db:\n    db[b'k'] = b'v'",
        "shelve": f"import shelve\nwith shelve.open({str(outside / 's')!r}) as db:\n    db['k'] = 1",
        "readline history": f"import readline\nreadline.write_history_file({str(outside / 'hist')!r})",
        "POSIX shared memory": f"from multiprocessing import shared_memory\nshared_memory.SharedMemory(name={SHM_NAME!r}, create=True, size=64)",
    }


INSIDE_OK = ("import sqlite3, shelve\nc = sqlite3.connect('in.db')\nc.execute('create table t(a)')\nc.execute('insert into t values (1)')\n"
             "c.commit()\nm = sqlite3.connect(':memory:')\nassert m.execute('select 2 * 21').fetchone() == (42,)\n"
             "with shelve.open('shelf') as db:\n    db['k'] = [1, 2]\nwith shelve.open('shelf') as db:\n    assert db['k'] == [1, 2]")


@pytest.mark.parametrize("landlock", [False, pytest.param(True, marks=pytest.mark.skipif(
    not landlock_abi(), reason="kernel without Landlock"))])
def test_c_level_file_writes_outside_the_folder_are_refused(tmp_path, monkeypatch, landlock):
    from tunesmith.eval import sandbox

    if not landlock:  # the audit hook alone must hold, as on a kernel without Landlock
        monkeypatch.setattr(sandbox, "landlock_abi", lambda: 0)
    assert ("landlock" in sandbox.isolation_layers()) == landlock
    outside = tmp_path / "outside"
    outside.mkdir()
    programs = c_writer_programs(outside)
    if landlock:
        # Deliberately lifting the hook's sqlite authorizer: only the kernel layer is left to stop it.
        programs["authorizer removed"] = (f"import sqlite3\nc = sqlite3.connect(':memory:')\nc.set_authorizer(None)\n"
                                          f"c.execute('attach database ? as x', ({str(outside / 'y.db')!r},))\n"
                                          "c.execute('create table x.t(a)')")
    try:
        for name, code in programs.items():
            out = run_python(code, LIMITS)
            assert not out.passed, name
            assert list(outside.iterdir()) == [], name
            assert not os.path.exists(f"/dev/shm/{SHM_NAME}"), name
    finally:
        if os.path.exists(f"/dev/shm/{SHM_NAME}"):
            os.unlink(f"/dev/shm/{SHM_NAME}")
    ok = run_python(INSIDE_OK, LIMITS)  # sqlite3 and shelve still work inside the folder and in memory
    assert ok.passed, ok.stderr


@pytest.mark.skipif(not landlock_abi(), reason="kernel without Landlock")
def test_landlock_confines_writes_even_without_the_audit_hook(tmp_path):
    import subprocess
    import sys

    from tunesmith.eval.sandbox import _child_setup

    box, outside = tmp_path / "box", tmp_path / "outside"
    box.mkdir()
    outside.mkdir()
    setup = _child_setup(LIMITS, False, landlock_abi(), str(box))
    attach = (f"import sqlite3\nc = sqlite3.connect(':memory:')\nc.execute('attach database ? as x', ({str(outside / 'x.db')!r},))\n"
              "c.execute('create table x.t(a)')")
    for code in (attach, f"open({str(outside / 'f')!r}, 'w')", f"import os\nos.mkdir({str(outside / 'd')!r})"):
        done = subprocess.run([sys.executable, "-I", "-c", code], cwd=box, preexec_fn=setup, capture_output=True, text=True,
                              timeout=30)
        assert done.returncode != 0, code
        assert "unable to open database" in done.stderr or "PermissionError" in done.stderr, done.stderr
    assert list(outside.iterdir()) == []
    inside = "import sqlite3\nc = sqlite3.connect('in.db')\nc.execute('create table t(a)')\nc.commit()\nopen('/dev/null', 'w').write('x')"
    done = subprocess.run([sys.executable, "-I", "-c", inside], cwd=box, preexec_fn=setup, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (box / "in.db").is_file()
