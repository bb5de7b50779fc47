"""The sandbox's child: runs in the sandboxed interpreter before, and around, the user's program.

`sandbox.run_python` starts `python -I -B -c <this file's source>` in the program's working
folder, so the program sees `sys.argv == ['-c']` and no path into tunesmith, and nothing here
depends on tunesmith being importable in the child. Importing this module has no effect; the
guard runs only as `__main__`.

What it does, in order: read "FD TOKEN" from stdin and swap stdin for /dev/null (so the program
cannot read the token), install an audit hook that cannot be removed from Python (see sandbox.py
for what it refuses and why), run main.py, and only if every line of it ran write the token to
FD: the proof that the tests, the program's last lines, completed.
"""

import os
import sys

# The only folder the program may write to: its working folder (set again when the guard runs).
ROOT = os.path.realpath(os.getcwd())


def _handshake():
    # "FD TOKEN" arrives on stdin; stdin is then /dev/null, so the program cannot read the token there.
    data = b""
    while True:
        chunk = os.read(0, 256)
        if not chunk:
            break
        data += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    fd, _, token = data.partition(b" ")
    return int(fd), token


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_DENY = {"os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill", "os.killpg",
         "subprocess.Popen", "pty.spawn", "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
         "socket.sendto", "resource.setrlimit", "resource.prlimit", "ctypes.dlsym", "ctypes.dlsym/handle",
         "ctypes.call_function", "ctypes.cdata", "ctypes.cdata/buffer", "ctypes.addressof",
         "sys.remote_exec", "os.setns", "os.unshare", "sqlite3.enable_load_extension", "sqlite3.load_extension"}
_DENY_IMPORTS = {"_posixsubprocess", "cffi", "_cffi_backend"}
# C modules that create files through their own open(2), unseen by the "open" event. ImportError
# (not PermissionError) so optional users fall back: dbm and shelve to the audited dbm.dumb.
_C_WRITERS = {"_gdbm", "_dbm", "_posixshmem", "_multiprocessing", "readline"}
_SQLITE_ATTACH, _SQLITE_DENY = 24, 1
_PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
                "os.utime": 1, "os.link": 2, "os.symlink": 2, "os.rename": 2, "shutil.rmtree": 1, "os.chflags": 1,
                "os.setxattr": 1, "os.removexattr": 1, "os.mkfifo": 1, "os.mknod": 1}


def _inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.fsdecode(os.fspath(path)))
    return p == ROOT or p.startswith(ROOT + os.sep) or p == "/dev/null"


def _sqlite_path(database):
    """The file a sqlite3.connect argument opens (a plain name or a file: URI), or None for memory."""
    name = os.fsdecode(os.fspath(database))
    if name in ("", ":memory:"):
        return None
    if name.startswith("file:"):
        from urllib.parse import unquote
        rest, _, query = name[5:].partition("?")
        rest = rest.split("#")[0]
        if rest.startswith("//"):
            rest = "/" + rest[2:].partition("/")[2]
        if rest in ("", ":memory:") or "mode=memory" in query:
            return None
        return unquote(rest)
    return name


def _sqlite_authorizer(action, *_):
    # ATTACH (and VACUUM INTO, which attaches its target) opens a file by name from SQL.
    return _SQLITE_DENY if action == _SQLITE_ATTACH else 0


def _guard_sqlite():
    """sqlite3 with an ATTACH-refusing authorizer on every connection, set as soon as it exists.

    The "sqlite3.connect/handle" event comes before the connection is usable, so the hook cannot
    set the authorizer itself; it refuses any connection not made through this class instead.
    """
    try:
        import sqlite3
        import sqlite3.dbapi2
    except ImportError:
        return ()
    class GuardedConnection(sqlite3.Connection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.set_authorizer(_sqlite_authorizer)
    plain = sqlite3.connect
    def connect(*args, **kwargs):
        if len(args) < 6:
            kwargs.setdefault("factory", GuardedConnection)
        return plain(*args, **kwargs)
    sqlite3.connect = sqlite3.dbapi2.connect = connect
    sqlite3.Connection = sqlite3.dbapi2.Connection = GuardedConnection
    return GuardedConnection


# Set when the guard runs; an empty tuple matches no connection.
_GUARDED_SQLITE = ()


def _hook(event, args):
    if event in _DENY:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0].split(".")[0] in _DENY_IMPORTS:
        raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
    if event == "import" and args[0] in _C_WRITERS:
        raise ImportError(f"sandbox: {args[0]} writes files outside the audit hook's view")
    if event == "sqlite3.connect":
        path = _sqlite_path(args[0])
        if path is not None and not _inside(path):
            raise PermissionError(f"sandbox: sqlite3 database {path!r} outside the working directory is not allowed")
    elif event == "sqlite3.connect/handle" and not isinstance(args[0], _GUARDED_SQLITE):
        raise PermissionError("sandbox: sqlite3 connections must come from sqlite3.connect or sqlite3.Connection")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory is not allowed")
    elif event in _PATH_EVENTS:
        for path in args[:_PATH_EVENTS[event]]:
            if path is not None and not _inside(path):
                raise PermissionError(f"sandbox: {event} on {path!r} outside the working directory is not allowed")


def _main():
    done_fd, token = _handshake()
    sys.addaudithook(_hook)
    source = open("main.py", encoding="utf-8").read()
    program_globals = {"__name__": "__main__", "__file__": os.path.join(ROOT, "main.py")}
    exec(compile(source, "main.py", "exec"), program_globals)
    # Reached only when every line of the program ran without raising: the proof the tests completed.
    os.write(done_fd, token)


if __name__ == "__main__":
    sys.dont_write_bytecode = True
    ROOT = os.path.realpath(os.getcwd())
    # Before the hook: wrapping sqlite3 imports it, and its connect must be wrapped before the program runs.
    _GUARDED_SQLITE = _guard_sqlite()
    _main()
