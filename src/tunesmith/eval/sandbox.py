"""Run untrusted Python (model-written code) in a contained subprocess.

Layers, each catching what the others might miss:
- a fresh user + network namespace (unshare(2) in the child before exec) when the kernel allows
  it: the code sees no network interface but a down loopback, so connections fail at the kernel;
- a Landlock ruleset (Linux 5.13+, when enabled) that lets the process create, write, truncate,
  rename or delete files only under its working folder (and write /dev/null): the kernel enforces
  it for every write, including those C libraries make with their own open(2) (sqlite's ATTACH,
  gdbm, shm_open) that no audit event reports, and it cannot be lifted from inside;
- resource limits set in the child before exec: CPU seconds, address space, file size (which also
  caps what it can print, since stdout goes to a file), open files, process count, no core dumps;
- a wall-clock timeout, after which the whole process session is SIGKILLed (a program that
  sleeps burns no CPU, so RLIMIT_CPU alone would not stop it);
- a CPython audit hook (sandbox_child.py) installed before the user code runs, which cannot be removed from Python:
  it refuses process creation (fork, exec, spawn, subprocess, os.system), signals, sockets, file
  writes and deletions/renames outside the working directory, changing rlimits, and the escape
  hatches that bypass audit events: ctypes may be imported (numpy needs it) but not look up or call
  a C function or touch raw memory; _posixsubprocess and cffi may not be imported; sqlite3 may only
  open databases inside the folder (or in memory) and may not ATTACH or load extensions; the C
  modules that write files behind the audit events (gdbm, ndbm, POSIX shared memory and
  semaphores, readline) fail to import, so dbm and shelve fall back to the audited dbm.dumb;
- a temporary working directory (also HOME and TMPDIR), deleted afterwards.

A run passes only when it exits 0 within its limits *and* its last line ran: the guard writes a
random per-run token to a private pipe after the program (whose last lines are the tests) returns,
so sys.exit(0), os._exit(0) or an atexit hook that exits 0 before or instead of the tests is a
failure. The token reaches the child on stdin, which is swapped for /dev/null before the program
starts; it is not in the source, argv or environment. This stops accidents, not a program written
to game its own checks: code in one interpreter with the tests can always fool them (an object
equal to everything passes any assert), so the layers contain such code but cannot score it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

@lru_cache(maxsize=1)
def _child_source() -> str:
    """The guard program (sandbox_child.py), passed to the child with -c.

    As source, not a path: the program then sees argv ['-c'] and no path into the installed
    package, and the child never imports tunesmith (whose copy under `python -I` could differ).
    """
    return resources.files("tunesmith.eval").joinpath("sandbox_child.py").read_text(encoding="utf-8")


_SETUP_FAILED = b"tunesmith-sandbox: could not create the network namespace\n"
_LANDLOCK_FAILED = b"tunesmith-sandbox: could not apply the Landlock ruleset\n"
_EARLY_EXIT = "\ntunesmith-sandbox: exit status 0 but the program did not run to its last line (sys.exit, os._exit or an atexit hook)\n"


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


# Landlock (linux/landlock.h). The three syscalls have these numbers on x86_64 and arm64 alike.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_ARCHES = {"x86_64", "aarch64", "arm64"}
_CREATE_RULESET_VERSION, _RULE_PATH_BENEATH, _PR_SET_NO_NEW_PRIVS = 1, 1, 38
# write_file, remove_dir, remove_file, make_char/dir/reg/sock/fifo/block/sym (reading stays free).
_FS_WRITE = (1 << 1) | sum(1 << b for b in range(4, 13))
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14   # ABI 2 and 3


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@lru_cache(maxsize=1)
def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is missing or disabled."""
    if platform.machine() not in _LANDLOCK_ARCHES:
        return 0
    return max(0, _libc().syscall(ctypes.c_long(_SYS_CREATE_RULESET), None, ctypes.c_size_t(0),
                                  ctypes.c_uint32(_CREATE_RULESET_VERSION)))


def isolation_layers() -> list[str]:
    """The layers run_python applies on this machine, as the report lists them."""
    return (["rlimits", "timeout+killpg", "audit-hook", "tempdir"] + (["netns"] if network_namespace_available() else [])
            + (["landlock"] if landlock_abi() else []))


def _landlock_rules(abi: int) -> tuple[_RulesetAttr, _PathBeneath, _PathBeneath]:
    handled = _FS_WRITE | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    # /dev/null is a file: only file rights may be granted on it.
    null_rights = (1 << 1) | (_FS_TRUNCATE if abi >= 3 else 0)
    return _RulesetAttr(handled), _PathBeneath(handled, -1), _PathBeneath(null_rights, -1)


def _restrict_writes(root: str, rules) -> bool:
    """Landlock this process (and anything it starts) to writing under `root` and to /dev/null."""
    attr, root_rule, null_rule = rules
    syscall, prctl = _libc().syscall, _libc().prctl
    ruleset = syscall(ctypes.c_long(_SYS_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                      ctypes.c_uint32(0))
    if ruleset < 0:
        return False
    try:
        for path, rule in ((root, root_rule), ("/dev/null", null_rule)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            rule.parent_fd = fd
            rc = syscall(ctypes.c_long(_SYS_ADD_RULE), ctypes.c_long(ruleset), ctypes.c_long(_RULE_PATH_BENEATH),
                         ctypes.byref(rule), ctypes.c_uint32(0))
            os.close(fd)
            if rc != 0:
                return False
        # Required to restrict oneself without CAP_SYS_ADMIN; it also bars gaining privileges via setuid files.
        if prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            return False
        return syscall(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_long(ruleset), ctypes.c_uint32(0)) == 0
    finally:
        os.close(ruleset)


def _child_setup(limits: SandboxLimits, netns: bool, landlock: int = 0, root: str = "."):
    cpu = int(limits.timeout_s) + 1
    mem = limits.memory_mb * 2**20
    fsize = limits.file_mb * 2**20
    rules = _landlock_rules(landlock) if landlock else None  # built before fork: the child only fills in fds

    def setup():
        # Runs between fork and exec, so only async-signal-safe-ish work: syscalls, no imports.
        if netns and _libc().unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            os.write(2, _SETUP_FAILED)
            os._exit(125)
        if rules is not None and not _restrict_writes(root, rules):
            os.write(2, _LANDLOCK_FAILED)
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
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _read(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _read_done(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""
    finally:
        os.close(fd)


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> RunOutcome:
    """Run `code` as a Python program under the limits above; passed means it exited 0 in time, having run to its end."""
    netns, landlock = network_namespace_available(), landlock_abi()
    isolation = isolation_layers()
    _libc()  # load before fork: the child must not dlopen between fork and exec
    box = Path(tempfile.mkdtemp(prefix="tunesmith-sandbox-"))
    work, logs = box / "work", box / "logs"
    work.mkdir()
    logs.mkdir()
    (work / "main.py").write_text(code, encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    token = secrets.token_hex(16).encode()
    done_r, done_w = os.pipe()
    start = time.monotonic()
    status, returncode = "failed", None
    try:
        with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", _child_source()], cwd=work, env=env,
                                        stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
                                        close_fds=True, pass_fds=(done_w,),
                                        preexec_fn=_child_setup(limits, netns, landlock, str(work)))
            finally:
                os.close(done_w)
            try:
                proc.stdin.write(b"%d %s" % (done_w, token))
                proc.stdin.close()
            except BrokenPipeError:  # the child died before reading (setup failure): reported below
                pass
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
        finished = _read_done(done_r) == token
        done_r = None
        stderr = _read(logs / "stderr")
        if returncode == 125 and stderr.encode().startswith((_SETUP_FAILED, _LANDLOCK_FAILED)):
            # Not the program's fault: scoring it as a failure would silently zero every pass@k.
            raise RuntimeError(stderr.strip())
        if status == "passed" and not finished:
            status, stderr = "failed", stderr + _EARLY_EXIT
        return RunOutcome(status == "passed", status, returncode, time.monotonic() - start,
                          _read(logs / "stdout"), stderr, isolation)
    finally:
        if done_r is not None:
            os.close(done_r)
        shutil.rmtree(box, ignore_errors=True)
