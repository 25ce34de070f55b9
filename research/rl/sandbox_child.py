"""The program that runs inside the sandbox: it confines itself, then runs the model's code and the
tests and reports each test to the parent (research/rl/sandbox.py).

    python -I -S sandbox_child.py          (cwd: the sandbox directory, holding job.json)

It starts as the parent's user, reads `job.json` and deletes it (the model's code never finds
the tests' source on disk), then, before any model code runs, it confines itself and forks:
the first process only waits and exits as the second, the worker, did (a signal as status
128 + its number; under a PID namespace the first is its PID 1, which the kernel shields from
signals such as SIGXCPU). The confinement, in order:

1. private mounts, only inside the mount namespace the parent made for it (never in the
   parent's): the world-writable /tmp, /var/tmp, /dev/shm and /run/lock become read-only,
   the sandbox directory stays writable;
2. resource limits (`setrlimit`): CPU seconds, address space, processes and threads of its
   user, file size, open files, no core files;
3. its private user: `setgroups([])`, `setgid`, `setuid` to the job's uid (when the parent is
   root), so the kernel applies the process limit (root is exempt from it) and file permissions
   (nothing outside the sandbox directory is writable by that user, apart from the
   world-writable directories that step 1 made read-only);
4. an audit hook (`sys.addaudithook`; Python code cannot remove it) refusing sockets, running
   another program (exec, spawn, system, `subprocess`: a new program would run without the
   hook), importing `ctypes` or `_posixsubprocess`, and writing, creating, renaming, linking,
   or deleting a path outside the sandbox directory.

The hook closes the ordinary Python paths; the kernel bounds what a program that gets past it
(through an extension module, or `dir_fd` tricks) can do: the user, the rlimits, and the
parent's network, process and mount namespaces. When step 1 ran, `ctypes` is already imported
and the hook's refusal to import it is moot; without namespaces it is not imported.

Tests convention. The code runs as module `solution` (an `if __name__ == "__main__":` block does
not run; `import solution` works); the tests then run in that same namespace, as if appended to
the code. Each top-level `assert` of the tests is one test, named "assert at line N"; each
top-level `def test_*()` is one test, named by the function and called after the whole tests
module ran; every other top-level statement is set-up. `planned_tests` lists the names in the
order they run; the parent checks the reports against it.

Reports are JSON lines written to the job's `report_fd`, never to stdout, each carrying the
job's nonce, so printing cannot forge a verdict:

    {"nonce": n, "event": "ready"}                                                confined
    {"nonce": n, "event": "setup", "outcome": "error" | "memory", "detail": ...}  code or set-up failed
    {"nonce": n, "event": "start", "test": name}
    {"nonce": n, "event": "end", "test": name, "outcome": "passed" | "failed" | "memory", "detail": ...}
    {"nonce": n, "event": "done"}                                                 every test ran

A program that reads the nonce out of this process's memory could forge reports; so could one
that redefines `==` on the objects it returns. The sandbox contains code; it does not prove
the code honest.

This file imports only the standard library: it runs under whichever Python interpreter the
sandbox's user can read.
"""

import ast
import builtins
import json
import os
import resource
import sys
import traceback
import types

JOB_FILE = "job.json"
CODE_FILE = "solution.py"
TESTS_FILE = "tests.py"
DETAIL_CHARS = 500
WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384

FORBIDDEN_EVENT_PREFIXES = ("socket.", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.", "pty.")
FORBIDDEN_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess"})
PATH_EVENTS = frozenset({"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                         "os.chown", "os.truncate", "os.utime", "os.setxattr", "os.removexattr"})
LINK_EVENTS = frozenset({"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink"})  # act on a link itself
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def planned_tests(tests_source: str) -> list[str]:
    """The names of the tests in `tests_source`, in the order they run (module docstring);
    SyntaxError if it is not Python, ValueError if a test_* function takes arguments."""
    body = ast.parse(tests_source, TESTS_FILE).body
    asserts = [f"assert at line {node.lineno}" for node in body if isinstance(node, ast.Assert)]
    return asserts + [node.name for node in _test_functions(body)]


def _test_functions(body: list[ast.stmt]) -> list[ast.FunctionDef]:
    functions = [node for node in body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    for node in functions:
        arguments = node.args
        if arguments.posonlyargs or arguments.args or arguments.kwonlyargs or arguments.vararg or arguments.kwarg:
            raise ValueError(f"test function {node.name} (line {node.lineno}) must take no arguments")
    return functions


def _read_job() -> dict:
    with open(JOB_FILE, encoding="utf-8") as file:
        job = json.load(file)
    os.remove(JOB_FILE)
    return job


def _make_world_writable_dirs_read_only(root: str, host_mount_namespace: str) -> None:
    """Bind `root` onto itself, then each world-writable directory (recursively, so `root` stays
    writable below it) onto itself read-only: mount(2) through ctypes, refused unless this
    process is in a mount namespace other than the host's."""
    if os.readlink("/proc/self/ns/mnt") == host_mount_namespace:
        raise RuntimeError("refusing to change mounts in the host's mount namespace")
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source: str | None, target: str, flags: int) -> None:
        if libc.mount(source and source.encode(), target.encode(), None, ctypes.c_ulong(flags), None):
            error = ctypes.get_errno()
            raise OSError(error, f"mount {source} on {target}: {os.strerror(error)}")

    mount(root, root, MS_BIND)
    for path in filter(os.path.isdir, WORLD_WRITABLE_DIRS):
        mount(path, path, MS_BIND | MS_REC)
        mount(None, path, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _limit_resources(job: dict) -> None:
    """rlimits as (soft, hard); the CPU limit's hard value is a second above the soft one, so
    SIGXCPU comes before SIGKILL."""
    memory = job["memory_mb"] * 1024 * 1024
    limits = {
        resource.RLIMIT_CPU: (job["cpu_s"], job["cpu_s"] + 1),
        resource.RLIMIT_AS: (memory, memory),
        resource.RLIMIT_NPROC: (job["max_processes"], job["max_processes"]),
        resource.RLIMIT_FSIZE: (job["max_file_bytes"], job["max_file_bytes"]),
        resource.RLIMIT_NOFILE: (job["max_open_files"], job["max_open_files"]),
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, value in limits.items():
        resource.setrlimit(which, value)


def _become(uid: int) -> None:
    """User and group `uid`, no supplementary groups, for good."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError(f"could not become uid {uid}")


def _resolved(path, follow: bool) -> str:
    """`path` made absolute through symlinks (relative to the current directory); with `follow`
    False the last component stays as it is (removing or renaming a link acts on the link)."""
    head, tail = os.path.split(os.fsdecode(path))
    if follow or tail in ("", ".", ".."):
        return os.path.realpath(os.fsdecode(path))
    return os.path.join(os.path.realpath(head or "."), tail)


def _inside(path, root: str, follow: bool = True) -> bool:
    """Whether `path` is `root` or below it."""
    resolved = _resolved(path, follow)
    return resolved == root or resolved.startswith(root + os.sep)


def _audit_hook(root: str):
    """The hook of step 4: PermissionError for a refused event."""
    is_path = (str, bytes, os.PathLike)

    def hook(event: str, args: tuple) -> None:
        if event.startswith(FORBIDDEN_EVENT_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in FORBIDDEN_IMPORTS:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            writes = isinstance(args[0], is_path) and args[2] & WRITE_FLAGS
            if writes and not _inside(args[0], root) and _resolved(args[0], follow=True) != os.devnull:
                raise PermissionError(f"sandbox: writing {args[0]!r} outside the sandbox is not allowed")
        if event in PATH_EVENTS:
            paths = args[1:2] if event == "os.symlink" else args  # a symlink may point anywhere
            follow = event not in LINK_EVENTS
            if any(isinstance(path, is_path) and not _inside(path, root, follow) for path in paths):
                raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")

    return hook


class _Reporter:
    """Writes the JSON-line reports to `fd` with functions bound before the model's code runs
    (the code rebinding `json.dumps` or `os.write` changes nothing here)."""

    def __init__(self, fd: int, nonce: str):
        self._fd, self._nonce, self._dumps, self._write = fd, nonce, json.dumps, os.write

    def __call__(self, event: str, **fields) -> None:
        line = self._dumps({"nonce": self._nonce, "event": event, **fields}) + "\n"
        self._write(self._fd, line.encode("utf-8"))


def _describe(error: BaseException, filename: str) -> str:
    """"ExceptionType: message (file line N)" (no ": message" when it is empty), at most
    DETAIL_CHARS; never raises."""
    message = type(error).__name__
    try:
        text = str(error)
    except BaseException:  # the model's exception may have a broken __str__
        text = ""
    message += f": {text}" if text else ""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == filename]
    where = f" ({filename} line {lines[-1]})" if lines else ""
    return message[:DETAIL_CHARS - len(where)] + where


def _execute(statement: ast.stmt, namespace: dict) -> None:
    exec(compile(ast.Module([statement], type_ignores=[]), TESTS_FILE, "exec"), namespace)


def _run_test(name: str, run, report) -> None:
    """One test: a "start" report, `run()`, an "end" report with its outcome."""
    report("start", test=name)
    try:
        run()
    except MemoryError:
        outcome, detail = "memory", "MemoryError"
    except BaseException as error:  # any exception, SystemExit too, fails the test
        outcome, detail = "failed", _describe(error, TESTS_FILE)
    else:
        outcome, detail = "passed", ""
    report("end", test=name, outcome=outcome, detail=detail)


def _run_job(code: str, tests: str, report) -> None:
    """The code, then the tests' top-level statements in order (asserts as tests), then the
    test_* functions."""
    module = types.ModuleType("solution")
    module.__builtins__ = builtins
    sys.modules["solution"] = module
    namespace = module.__dict__
    try:
        exec(compile(code, CODE_FILE, "exec"), namespace)
    except MemoryError:
        return report("setup", outcome="memory", detail="MemoryError in the code")
    except BaseException as error:  # code that does not compile or raises is the model's error
        return report("setup", outcome="error", detail="code: " + _describe(error, CODE_FILE))
    body = ast.parse(tests, TESTS_FILE).body
    for statement in body:
        if isinstance(statement, ast.Assert):
            _run_test(f"assert at line {statement.lineno}", lambda s=statement: _execute(s, namespace), report)
            continue
        try:
            _execute(statement, namespace)
        except MemoryError:
            return report("setup", outcome="memory", detail="MemoryError in the tests' set-up")
        except BaseException as error:  # set-up that fails against this code
            return report("setup", outcome="error", detail="tests: " + _describe(error, TESTS_FILE))
    for function in _test_functions(body):
        _run_test(function.name, lambda name=function.name: namespace[name](), report)
    report("done")


def _wait_and_exit(worker: int) -> None:
    """Wait for `worker` and exit as it did; a signal becomes status 128 + its number (as in a
    shell: `unshare` and the parent then see how the worker ended)."""
    _, status = os.waitpid(worker, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def main() -> None:
    job = _read_job()
    root = os.path.realpath(os.getcwd())
    if job["host_mount_namespace"] is not None:
        _make_world_writable_dirs_read_only(root, job["host_mount_namespace"])
    _limit_resources(job)
    os.umask(0o077)
    if job["uid"] is not None:
        _become(job["uid"])
    worker = os.fork()
    if worker:
        _wait_and_exit(worker)
    sys.addaudithook(_audit_hook(root))
    report = _Reporter(job["report_fd"], job["nonce"])
    report("ready")
    _run_job(job["code"], job["tests"], report)


if __name__ == "__main__":
    main()
