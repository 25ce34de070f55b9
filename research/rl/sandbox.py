"""Running model-written code against tests, contained: `run_tests` for one program, `run_many`
for many in parallel.

Each run is a fresh process tree in a fresh temporary directory (deleted afterwards), started
by research/rl/sandbox_child.py under the machine's isolation (research/rl/sandbox_isolation.py:
a private uid, network, PID and mount namespaces when root; `isolation()` names them) with
rlimits on CPU time (⌈timeout_s⌉ + 1 s), address space (`memory_mb` for the whole process,
the interpreter's own ~16 MB included), processes and threads
(MAX_PROCESSES, the sandbox's own two included), file size, open files and core files, an
audit hook against sockets, other programs and writes outside the directory, and a minimal
environment (`python -I -S`, no inherited variables, HOME and TMPDIR the directory). The
parent waits at most `timeout_s` of wall-clock time from the start, reads at most
MAX_OUTPUT_BYTES of each of stdout and stderr (more kills the run), then kills what is left
(the PID namespace, the process group, and without a namespace every process of the run's uid)
before it returns.

Tests convention (research/rl/sandbox_child.py): the tests run in the code's namespace, as if
appended to it; each top-level `assert` is a test ("assert at line N"), each `def test_*()` is a
test (called after the tests' top-level statements); anything else is set-up. The verdict comes
from reports on a separate pipe, checked against a per-run nonce and the tests the parent itself
found in `tests`; stdout is never parsed. Statuses: research/rl/sandbox_verdict.py.
"""

import concurrent.futures
import dataclasses
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable

from research.rl import sandbox_isolation
from research.rl.sandbox_child import JOB_FILE, planned_tests
from research.rl.sandbox_pipes import collect
from research.rl.sandbox_verdict import judge, read_reports

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
MAX_PROCESSES = 16
MAX_FILE_BYTES = 16 * 2**20
MAX_OPEN_FILES = 64
MAX_OUTPUT_BYTES = 64 * 2**10
MAX_REPORT_BYTES = 2**20
NAMESPACE_EXIT_S = 10.0  # for unshare to exit once its PID namespace's init is killed


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """One run: `status` (one of sandbox_verdict.STATUSES; `passed` is status == "passed"),
    `tests_passed` of `tests_total`, the first test that did not pass (`failed_test`, None if
    none), a `detail` ("AssertionError: ... (tests.py line 3)"), the captured `stdout` and
    `stderr` (each at most MAX_OUTPUT_BYTES, decoded with replacement), `wall_s` from the start
    until the run's processes were gone, and the `isolation` used."""

    status: str
    tests_total: int
    tests_passed: int
    failed_test: str | None
    detail: str
    stdout: str
    stderr: str
    wall_s: float
    isolation: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def isolation() -> str:
    """The isolation runs get on this machine, in words (probed once per process)."""
    return sandbox_isolation.detect().describe()


def _check_limits(timeout_s, memory_mb) -> None:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
        raise ValueError(f"timeout_s must be a positive finite number of seconds, got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 1:
        raise ValueError(f"memory_mb must be a positive int, got {memory_mb!r}")


def _planned(code, tests, name: str = "") -> list[str]:
    """The tests' names after checking both sources are strings; ValueError naming the argument
    (prefixed by `name`)."""
    for argument, value in (("code", code), ("tests", tests)):
        if not isinstance(value, str):
            raise ValueError(f"{name}{argument} must be a str, got {type(value).__name__}")
    try:
        plan = planned_tests(tests)
    except (SyntaxError, ValueError) as error:
        raise ValueError(f"{name}tests is not a valid tests module: {error}") from error
    if not plan:
        raise ValueError(f"{name}tests has no top-level assert and no test_* function")
    return plan


def check_arguments(code, tests, *, timeout_s=5.0, memory_mb=512) -> list[str]:
    """ValueError unless `run_tests` accepts these arguments; else the names of the tests, in
    the order they run."""
    _check_limits(timeout_s, memory_mb)
    return _planned(code, tests)


def _job(code: str, tests: str, *, nonce: str, uid: int | None, timeout_s: float, memory_mb: int,
         report_fd: int, isolation: sandbox_isolation.Isolation) -> dict:
    """The child's job.json (research/rl/sandbox_child.py reads every field)."""
    return {
        "code": code, "tests": tests, "nonce": nonce, "uid": uid, "report_fd": report_fd,
        "cpu_s": math.ceil(timeout_s) + 1, "memory_mb": memory_mb,
        "max_processes": sandbox_isolation.process_limit(isolation, MAX_PROCESSES),
        "max_file_bytes": MAX_FILE_BYTES, "max_open_files": MAX_OPEN_FILES,
        "host_mount_namespace": os.readlink("/proc/self/ns/mnt") if isolation.namespaces else None,
    }


def _write_private(path: str, text: str) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as file:
        file.write(text)


def _end(process: subprocess.Popen, uid: int | None, isolation: sandbox_isolation.Isolation) -> None:
    """Kill what is left of a run and return once it is gone: with namespaces, the PID namespace
    (its init, then `unshare` exits by itself); then the process group; without namespaces,
    every process of the run's uid too."""
    if isolation.namespaces:
        sandbox_isolation.kill_namespace_init(process.pid)
        try:
            process.wait(NAMESPACE_EXIT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    if uid is not None and not isolation.namespaces:
        sandbox_isolation.kill_user(uid, isolation.python)


def _run(code: str, tests: str, plan: list[str], timeout_s: float, memory_mb: int) -> SandboxResult:
    isolation = sandbox_isolation.detect()
    uid = sandbox_isolation.private_uid() if isolation.private_users else None
    nonce = secrets.token_hex(16)
    directory = tempfile.mkdtemp(prefix="sandbox-")
    report_read, report_write = os.pipe()
    try:
        job = _job(code, tests, nonce=nonce, uid=uid, timeout_s=timeout_s, memory_mb=memory_mb,
                   report_fd=report_write, isolation=isolation)
        _write_private(os.path.join(directory, JOB_FILE), json.dumps(job))
        if uid is not None:
            os.chown(directory, uid, uid)
        environment = {"PATH": os.defpath, "HOME": directory, "TMPDIR": directory, "LC_ALL": "C.UTF-8"}
        start = time.monotonic()
        with subprocess.Popen([*isolation.namespaces, isolation.python, "-I", "-S", CHILD], cwd=directory,
                              env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, pass_fds=(report_write,), start_new_session=True) as process:
            os.close(report_write)
            report_write = None
            process_fd = os.pidfd_open(process.pid)
            try:
                pipes = {"stdout": process.stdout.fileno(), "stderr": process.stderr.fileno(), "reports": report_read}
                caps = {"stdout": MAX_OUTPUT_BYTES, "stderr": MAX_OUTPUT_BYTES, "reports": MAX_REPORT_BYTES}
                collected = collect(process_fd, pipes, caps, start + timeout_s)
            finally:
                os.close(process_fd)
                _end(process, uid, isolation)
        wall_s = time.monotonic() - start
    finally:
        for fd in (report_read, report_write):
            if fd is not None:
                os.close(fd)
        # As root nothing resists removal; a non-root run may leave a directory it made unreadable.
        shutil.rmtree(directory, ignore_errors=not isolation.private_users)
    stdout, stderr = (collected.data[name].decode("utf-8", "replace") for name in ("stdout", "stderr"))
    reports = read_reports(collected.data["reports"], nonce, plan)
    if not reports.ready and collected.stop is None:
        raise RuntimeError(f"the sandbox exited with status {process.returncode} before running the code "
                           f"({isolation.describe()}): {stderr[-2000:]}")
    verdict = judge(reports, plan, stop=collected.stop, returncode=process.returncode)
    return SandboxResult(verdict.status, len(plan), verdict.tests_passed, verdict.failed_test, verdict.detail,
                         stdout, stderr, wall_s, isolation.describe())


def run_tests(code: str, tests: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Run `code`, then `tests` against it (module docstring), in the sandbox; wait at most
    `timeout_s` seconds; `memory_mb` caps the address space. ValueError for arguments that are
    not strings, tests that are not Python or hold no test, and limits that are not positive;
    untrusted `code` never raises (invalid Python is status "error")."""
    return _run(code, tests, check_arguments(code, tests, timeout_s=timeout_s, memory_mb=memory_mb), timeout_s,
                memory_mb)


def run_many(jobs: Iterable[tuple[str, str]], *, workers: int | None = None, timeout_s: float = 5.0,
             memory_mb: int = 512) -> list[SandboxResult]:
    """`run_tests` for each (code, tests) pair of `jobs`, `workers` at a time (default: one per
    CPU; each worker thread waits on its child), results in the order of `jobs`. Every job is
    checked before any runs."""
    _check_limits(timeout_s, memory_mb)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive int or None, got {workers!r}")
    jobs = list(jobs)
    for index, job in enumerate(jobs):
        if not isinstance(job, tuple) or len(job) != 2:
            raise ValueError(f"jobs[{index}] must be a (code, tests) tuple, got {type(job).__name__}")
    plans = [_planned(code, tests, f"jobs[{index}]: ") for index, (code, tests) in enumerate(jobs)]
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return list(pool.map(lambda job, plan: _run(*job, plan, timeout_s, memory_mb), jobs, plans))
