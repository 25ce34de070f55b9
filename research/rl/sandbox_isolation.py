"""What confines a sandboxed program on this machine, found once per process.

As root (a TPU/GPU VM, a container):
- a private user per run: a random uid in [2**30, 2**31 − 1), owner of nothing on the machine.
  The kernel then enforces the process limit (RLIMIT_NPROC counts a user's processes and does
  not apply to root) and file permissions. Two runs at once share a uid with probability
  n²/2**31 for n runs at once (2e-8 at n = 8);
- a Python interpreter that user can run: `sys.executable` when its standard library is
  readable by an unprivileged user, else the system's `python3` (an interpreter installed
  under root's 0700 home is not);
- namespaces, when util-linux's `unshare` can make them: network (only a loopback, down: no
  connection leaves or arrives), PID (the program is PID 1 of its own namespace; when it exits
  the kernel kills and reaps every process it left, whatever session or group they moved to),
  and mount (its own /proc; the child also makes the world-writable directories read-only).
  Without them, the run's processes are killed by uid afterwards (`kill_user`).

Not root: the parent's own user and interpreter and no namespaces; the process limit then counts
the user's processes already running (`process_limit`), and the audit hook of
research/rl/sandbox_child.py is what keeps sockets and writes out.
"""

import dataclasses
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys

NAMESPACES = ("unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--")
PRIVATE_UID_BASE = 2**30
PRIVATE_UID_COUNT = 2**30 - 1
PROBE_TIMEOUT_S = 60.0
STDLIB_PROBE = "import json"  # a pure-Python package: the standard library's directory is readable
KILL_ALL_OF_MY_USER = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass"


@dataclasses.dataclass(frozen=True)
class Isolation:
    """How runs are confined: `python` runs the child, after the `namespaces` command prefix
    (empty: none); `private_users`: each run gets its own uid."""

    python: str
    namespaces: tuple[str, ...]
    private_users: bool

    def describe(self) -> str:
        """One line naming every layer, e.g. for a benchmark's output."""
        layers = ["private uid per run"] if self.private_users else [f"uid {os.geteuid()} (not root)"]
        if self.namespaces:
            layers.append("network, PID and mount namespaces (unshare), world-writable dirs read-only")
        layers += ["rlimits (CPU, address space, processes, file size, open files, core)",
                   "audit hook (sockets, exec, writes outside the sandbox)", f"python {self.python}"]
        return "; ".join(layers)


def private_uid() -> int:
    """A fresh random uid for one run."""
    return PRIVATE_UID_BASE + secrets.randbelow(PRIVATE_UID_COUNT)


def _as_user(uid: int) -> dict:
    """`subprocess` keyword arguments that run a command as `uid` (group `uid`, no other groups)."""
    return {"user": uid, "group": uid, "extra_groups": []}


def _runs(command: list[str], **kwargs) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=PROBE_TIMEOUT_S, env={}, cwd="/",
                              **kwargs).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _python_for(uid: int) -> str:
    """The first interpreter whose standard library `uid` can import."""
    candidates = [sys.executable, shutil.which("python3", path=os.defpath)]
    for python in filter(None, candidates):
        if _runs([python, "-I", "-S", "-c", STDLIB_PROBE], **_as_user(uid)):
            return python
    raise RuntimeError(f"no Python interpreter an unprivileged user can run: tried {candidates}; "
                       "install python3 in /usr/bin or run the sandbox's caller from a world-readable interpreter")


@functools.cache
def detect() -> Isolation:
    """This machine's isolation (probed once: a few short subprocesses)."""
    if os.geteuid() != 0:
        return Isolation(python=sys.executable, namespaces=(), private_users=False)
    namespaces = NAMESPACES if _runs([*NAMESPACES, "true"]) else ()
    return Isolation(python=_python_for(private_uid()), namespaces=namespaces, private_users=True)


def process_limit(isolation: Isolation, max_processes: int) -> int:
    """RLIMIT_NPROC that lets a run start `max_processes` processes and threads: the number
    itself for a private user, else that many above the threads the user already runs."""
    if isolation.private_users:
        return max_processes
    return max_processes + _threads_of(os.getuid())


def _status(pid: int | str) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.split(":", 1) for line in status if ":" in line)


def _threads_of(uid: int) -> int:
    """Threads (what RLIMIT_NPROC counts) of the processes whose real uid is `uid`, from /proc."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = _status(pid)
        except OSError:  # the process exited meanwhile
            continue
        if int(fields["Uid"].split()[0]) == uid:
            total += int(fields["Threads"])
    return total


def kill_namespace_init(unshare_pid: int) -> None:
    """SIGKILL the child of `unshare --fork` (the init of its PID namespace), through a pidfd
    checked to be that child. `unshare` then reaps it, which the kernel allows only once every
    process of the namespace is dead and reaped, and exits; killing `unshare` first would leave
    the init to the machine's PID 1, whose reaping may lag."""
    try:
        with open(f"/proc/{unshare_pid}/task/{unshare_pid}/children") as file:
            children = [int(pid) for pid in file.read().split()]
    except OSError:  # unshare already exited
        return
    for pid in children:
        try:
            process_fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if int(_status(pid)["PPid"]) == unshare_pid:  # the pidfd pins this very process
                signal.pidfd_send_signal(process_fd, signal.SIGKILL)
        except (OSError, KeyError):  # it exited meanwhile
            pass
        finally:
            os.close(process_fd)


def kill_user(uid: int, python: str) -> None:
    """SIGKILL every process of `uid` (kill(-1) as that user), for runs without a PID namespace."""
    _runs([python, "-I", "-S", "-c", KILL_ALL_OF_MY_USER], **_as_user(uid))
