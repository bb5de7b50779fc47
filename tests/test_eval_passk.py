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
from tunesmith.eval.sandbox import SandboxLimits, network_namespace_available, run_python

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
