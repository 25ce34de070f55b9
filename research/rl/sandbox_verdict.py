"""From what a sandboxed run left behind to its status: a pure function of the report lines,
why collection stopped and the exit status.

Statuses, the first that applies:

    "timeout"       the wall-clock deadline passed, or the CPU-time limit killed the worker
    "output_limit"  stdout or stderr went over its cap (the run is killed then)
    "error"         a report line is not genuine (wrong nonce, unknown test, out of order), the
                    code does not compile or raised, the tests' set-up raised, or the run ended
                    before every test ran (os._exit, a signal such as SIGSEGV)
    "memory"        a MemoryError, in the code or in a test (the address-space limit)
    "failed"        a test raised (an assertion, or any other exception)
    "passed"        every planned test ran and passed, and the run exited with status 0

Reports come from research/rl/sandbox_child.py (its docstring has their format).
"""

import dataclasses
import json
import signal
from collections.abc import Sequence

STATUSES = ("passed", "failed", "error", "timeout", "memory", "output_limit")
CPU_LIMIT_SIGNALS = (signal.SIGXCPU, signal.SIGKILL)
SIGNAL_STATUS_BASE = 128  # the child exits with 128 + n when its worker died of signal n


@dataclasses.dataclass(frozen=True)
class Reports:
    """The genuine reports of one run: `invalid` says why a line was rejected (then the rest is
    what came before it)."""

    ready: bool = False
    setup: tuple[str, str] | None = None  # (outcome, detail) when the code or the set-up failed
    started: tuple[str, ...] = ()
    ended: tuple[tuple[str, str, str], ...] = ()  # (test, outcome, detail) in order
    done: bool = False
    invalid: str | None = None


@dataclasses.dataclass(frozen=True)
class Judgement:
    """A run's status (one of STATUSES), how many tests passed, the first test that did not pass
    (None when none failed), and a human-readable detail."""

    status: str
    tests_passed: int
    failed_test: str | None
    detail: str


def _next(reports: Reports, record, plan: Sequence[str]) -> Reports:
    """`reports` with one more decoded line, or with `invalid` set if the line does not fit."""
    event = record.get("event") if isinstance(record, dict) else None
    test = record.get("test") if isinstance(record, dict) else None
    in_test = len(reports.started) > len(reports.ended)
    if event == "ready" and not reports.ready:
        return dataclasses.replace(reports, ready=True)
    if not reports.ready or reports.setup or reports.done:
        return dataclasses.replace(reports, invalid=f"{event!r} report out of order")
    if event == "setup" and not in_test and record.get("outcome") in ("error", "memory"):
        return dataclasses.replace(reports, setup=(record["outcome"], str(record.get("detail", ""))))
    if event == "start" and not in_test and len(reports.started) < len(plan) and test == plan[len(reports.started)]:
        return dataclasses.replace(reports, started=reports.started + (test,))
    if event == "end" and in_test and test == reports.started[-1] and record.get("outcome") in ("passed", "failed",
                                                                                             "memory"):
        ended = (test, record["outcome"], str(record.get("detail", "")))
        return dataclasses.replace(reports, ended=reports.ended + (ended,))
    if event == "done" and not in_test and len(reports.started) == len(plan):
        return dataclasses.replace(reports, done=True)
    return dataclasses.replace(reports, invalid=f"unexpected report {record!r:.200}")


def read_reports(raw: bytes, nonce: str, plan: Sequence[str]) -> Reports:
    """The complete lines of `raw` as reports, checked against `nonce` and the planned tests
    (a last line without its newline was cut by a kill and is dropped)."""
    reports = Reports()
    for line in raw.split(b"\n")[:-1]:
        try:
            record = json.loads(line)
        except ValueError:
            return dataclasses.replace(reports, invalid=f"unreadable report {line[:200]!r}")
        if not isinstance(record, dict) or record.get("nonce") != nonce:
            return dataclasses.replace(reports, invalid=f"report without the run's nonce: {line[:200]!r}")
        reports = _next(reports, record, plan)
        if reports.invalid:
            return reports
    return reports


def _ending(returncode: int) -> str:
    if returncode > SIGNAL_STATUS_BASE:
        try:
            return f"killed by {signal.Signals(returncode - SIGNAL_STATUS_BASE).name}"
        except ValueError:
            pass
    return f"exited with status {returncode}"


def judge(reports: Reports, plan: Sequence[str], *, stop: str | None, returncode: int) -> Judgement:
    """The status of a run (module docstring) from its reports, why collection stopped (None:
    the run exited; "timeout"; "stdout", "stderr" or "reports": that pipe went over its cap)
    and the child's exit status."""
    passed = sum(outcome == "passed" for _, outcome, _ in reports.ended)
    not_passed = [(test, outcome, detail) for test, outcome, detail in reports.ended if outcome != "passed"]
    running = reports.started[len(reports.ended):]
    first_failed = not_passed[0][0] if not_passed else (running[0] if running else None)
    during = f" during {running[0]}" if running else ""

    def verdict(status: str, detail: str, failed_test: str | None = first_failed) -> Judgement:
        return Judgement(status, passed, failed_test, detail)

    if stop == "timeout":
        return verdict("timeout", "wall-clock time limit" + during)
    if stop in ("stdout", "stderr"):
        return verdict("output_limit", f"{stop} over its cap" + during)
    if stop == "reports":
        return verdict("error", "report pipe over its cap")
    if reports.invalid:
        return verdict("error", reports.invalid)
    memory = [test for test, outcome, _ in not_passed if outcome == "memory"]
    if memory:
        return verdict("memory", f"MemoryError in {memory[0]}", memory[0])
    if reports.setup and reports.setup[0] == "memory":
        return verdict("memory", reports.setup[1], None)
    if returncode - SIGNAL_STATUS_BASE in CPU_LIMIT_SIGNALS:
        return verdict("timeout", "CPU time limit" + during)
    if reports.setup:
        return verdict("error", reports.setup[1], None)
    if not_passed:
        return verdict("failed", not_passed[0][2])
    if reports.done and passed == len(plan) and returncode == 0:
        return verdict("passed", "", None)
    return verdict("error", _ending(returncode) + (during or ("" if reports.done else " before every test ran")))
