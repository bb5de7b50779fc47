"""Run untrusted Python (model-written code) in a contained subprocess.

Layers, each catching what the others might miss:
- a fresh user + network namespace (unshare(2) in the child before exec) when the kernel allows
  it: the code sees no network interface but a down loopback, so connections fail at the kernel;
- resource limits set in the child before exec: CPU seconds, address space, file size (which also
  caps what it can print, since stdout goes to a file), open files, process count, no core dumps;
- a wall-clock timeout, after which the whole process session is SIGKILLed (a program that
  sleeps burns no CPU, so RLIMIT_CPU alone would not stop it);
- a CPython audit hook installed before the user code runs, which cannot be removed from Python:
  it refuses process creation (fork, exec, spawn, subprocess, os.system), signals, sockets, file
  writes and deletions/renames outside the working directory, changing rlimits, and the escape
  hatches that bypass audit events: ctypes may be imported (numpy needs it) but not look up or call
  a C function or touch raw memory; _posixsubprocess and cffi may not be imported;
- a temporary working directory (also HOME and TMPDIR), deleted afterwards.

A run that does not exit 0 within its limits, for whatever reason, is a failure.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

# Runs in the child before the user's program; `ROOT` is the only folder it may write to.
_GUARD = r'''
import os, sys
sys.dont_write_bytecode = True
ROOT = os.path.realpath(os.getcwd())
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_DENY = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill", "os.killpg",
         "subprocess.Popen", "pty.spawn", "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
         "socket.sendto", "resource.setrlimit", "resource.prlimit", "ctypes.dlsym", "ctypes.dlsym/handle",
         "ctypes.call_function", "ctypes.cdata", "ctypes.cdata/buffer", "ctypes.addressof",
         "sys.remote_exec", "os.setns", "os.unshare"}
_DENY_IMPORTS = {"_posixsubprocess", "cffi", "_cffi_backend"}
_PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
                "os.utime": 1, "os.link": 2, "os.symlink": 2, "os.rename": 2, "shutil.rmtree": 1, "os.chflags": 1,
                "os.setxattr": 1, "os.removexattr": 1, "os.mkfifo": 1, "os.mknod": 1}

def _inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.fsdecode(os.fspath(path)))
    return p == ROOT or p.startswith(ROOT + os.sep) or p == "/dev/null"

def _hook(event, args):
    if event in _DENY:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0].split(".")[0] in _DENY_IMPORTS:
        raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory is not allowed")
    elif event in _PATH_EVENTS:
        for path in args[:_PATH_EVENTS[event]]:
            if path is not None and not _inside(path):
                raise PermissionError(f"sandbox: {event} on {path!r} outside the working directory is not allowed")

sys.addaudithook(_hook)
del _hook
_source = open("main.py", encoding="utf-8").read()
_globals = {"__name__": "__main__", "__file__": os.path.join(ROOT, "main.py")}
exec(compile(_source, "main.py", "exec"), _globals)
'''


_SETUP_FAILED = b"tunesmith-sandbox: could not create the network namespace\n"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0
    memory_mb: int = 512
    file_mb: int = 8
    open_files: int = 64
    processes: int = 32


@dataclass
class RunOutcome:
    passed: bool
    status: str            # passed | failed | timeout | signal
    returncode: int | None
    elapsed_s: float
    stdout: str = ""
    stderr: str = ""
    isolation: list[str] = field(default_factory=list)


@lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """Whether this kernel lets us create a user + network namespace (probed once, in a throwaway child)."""
    try:
        done = subprocess.run([sys.executable, "-c", "import ctypes,sys;"
                               f"sys.exit(ctypes.CDLL(None,use_errno=True).unshare({CLONE_NEWUSER | CLONE_NEWNET}))"],
                              capture_output=True, timeout=30)
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _child_setup(limits: SandboxLimits, netns: bool):
    cpu = int(limits.timeout_s) + 1
    mem = limits.memory_mb * 2**20
    fsize = limits.file_mb * 2**20

    def setup():
        # Runs between fork and exec, so only async-signal-safe-ish work: syscalls, no imports.
        if netns and _libc().unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            os.write(2, _SETUP_FAILED)
            os._exit(125)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    return setup


@lru_cache(maxsize=1)
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _read(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> RunOutcome:
    """Run `code` as a Python program under the limits above; passed means it exited 0 in time."""
    netns = network_namespace_available()
    isolation = ["rlimits", "timeout+killpg", "audit-hook", "tempdir"] + (["netns"] if netns else [])
    _libc()  # load before fork: the child must not dlopen between fork and exec
    box = Path(tempfile.mkdtemp(prefix="tunesmith-sandbox-"))
    work, logs = box / "work", box / "logs"
    work.mkdir()
    logs.mkdir()
    (work / "main.py").write_text(code, encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    start = time.monotonic()
    status, returncode = "failed", None
    try:
        with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", _GUARD], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True, close_fds=True,
                                    preexec_fn=_child_setup(limits, netns))
            try:
                returncode = proc.wait(timeout=limits.timeout_s)
                status = "passed" if returncode == 0 else ("signal" if returncode < 0 else "failed")
            except subprocess.TimeoutExpired:
                status = "timeout"
            finally:
                # The session's whole process group goes, including anything it managed to start.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        stderr = _read(logs / "stderr")
        if returncode == 125 and stderr.encode().startswith(_SETUP_FAILED):
            # Not the program's fault: scoring it as a failure would silently zero every pass@k.
            raise RuntimeError(stderr.strip())
        return RunOutcome(status == "passed", status, returncode, time.monotonic() - start,
                          _read(logs / "stdout"), stderr, isolation)
    finally:
        shutil.rmtree(box, ignore_errors=True)
