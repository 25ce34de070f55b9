"""One run per workdir: an exclusive lock that process 0 holds for the run's life.

The lock is `fcntl.flock` on `<workdir>/run.lock`: the kernel releases it when the holder exits,
however it exits (SIGKILL and crashes included), so a lock left by a dead process is never in the
way. The file records the holder (host, pid, start time) for the error a second run gets.
"""

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

LOCK_FILE = "run.lock"


class WorkdirLocked(RuntimeError):
    """Another process holds the workdir."""


def holder_of(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"process {holder['pid']} on {holder['host']} (since {holder['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir or raises WorkdirLocked naming the holder."""

    def __init__(self, workdir):
        self.path = Path(workdir) / LOCK_FILE
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirLocked(f"{self.path.parent} is in use by {holder_of(self.path)}; wait for that run "
                                "to end or stop it, or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": datetime.datetime.now().isoformat(timespec="seconds")}).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc_info):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def is_locked(workdir) -> str | None:
    """The holder of `workdir` if a live process holds it, else None (takes and drops the lock)."""
    try:
        with WorkdirLock(workdir):
            return None
    except WorkdirLocked as error:
        return str(error)
