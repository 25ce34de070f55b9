"""research/rl/sandbox_verdict.py: which report lines count, and the status they add up to."""

import json
import signal

import pytest

from research.rl.sandbox_verdict import SIGNAL_STATUS_BASE, judge, read_reports

NONCE = "n0nce"
PLAN = ["assert at line 1", "test_b"]


def lines(*records, nonce=NONCE) -> bytes:
    return b"".join(json.dumps({"nonce": nonce, **record}).encode() + b"\n" for record in records)


def run_of(*outcomes, done=True) -> bytes:
    """Genuine reports: ready, then a start and an end per outcome, then done."""
    records = [{"event": "ready"}]
    for test, outcome in zip(PLAN, outcomes):
        records += [{"event": "start", "test": test}, {"event": "end", "test": test, "outcome": outcome,
                                                        "detail": f"{outcome} detail"}]
    return lines(*records, *([{"event": "done"}] if done else []))


def test_genuine_reports_are_read_in_order():
    reports = read_reports(run_of("passed", "failed"), NONCE, PLAN)
    assert reports.ready and reports.done and reports.invalid is None
    assert reports.started == tuple(PLAN)
    assert [outcome for _, outcome, _ in reports.ended] == ["passed", "failed"]


def test_a_line_cut_by_a_kill_is_dropped():
    raw = run_of("passed", done=False) + lines({"event": "start", "test": "test_b"})[:-5]
    reports = read_reports(raw, NONCE, PLAN)
    assert reports.invalid is None and reports.started == (PLAN[0],)


@pytest.mark.parametrize("raw, reason", [
    (lines({"event": "ready"}, {"event": "done"}, nonce="guess"), "nonce"),
    (b"not json\n", "unreadable"),
    (lines({"event": "ready"}, {"event": "start", "test": "test_b"}), "unexpected"),
    (lines({"event": "ready"}, {"event": "end", "test": PLAN[0], "outcome": "passed"}), "unexpected"),
    (lines({"event": "ready"}, {"event": "done"}), "unexpected"),
    (run_of("passed", "passed") + lines({"event": "done"}), "out of order"),
])
def test_forged_or_misplaced_reports_are_invalid(raw, reason):
    reports = read_reports(raw, NONCE, PLAN)
    assert reason in reports.invalid
    assert judge(reports, PLAN, stop=None, returncode=0).status == "error"


@pytest.mark.parametrize("raw, stop, returncode, status, failed_test", [
    (run_of("passed", "passed"), None, 0, "passed", None),
    (run_of("passed", "passed"), None, 3, "error", None),
    (run_of("passed", "failed"), None, 0, "failed", "test_b"),
    (run_of("failed", "memory"), None, 0, "memory", "test_b"),
    (run_of("passed", "passed"), "stdout", 0, "output_limit", None),
    (run_of("passed", done=False) + lines({"event": "start", "test": "test_b"}), "timeout", -9, "timeout", "test_b"),
    (run_of("passed", done=False) + lines({"event": "start", "test": "test_b"}), None,
     SIGNAL_STATUS_BASE + signal.SIGXCPU, "timeout", "test_b"),
    (run_of("passed", done=False) + lines({"event": "start", "test": "test_b"}), None,
     SIGNAL_STATUS_BASE + signal.SIGSEGV, "error", "test_b"),
    (lines({"event": "ready"}, {"event": "setup", "outcome": "error", "detail": "code: SyntaxError"}), None, 0,
     "error", None),
    (lines({"event": "ready"}, {"event": "setup", "outcome": "memory", "detail": "MemoryError in the code"}), None,
     0, "memory", None),
])
def test_status(raw, stop, returncode, status, failed_test):
    verdict = judge(read_reports(raw, NONCE, PLAN), PLAN, stop=stop, returncode=returncode)
    assert (verdict.status, verdict.failed_test) == (status, failed_test)
    assert verdict.tests_passed == raw.count(b'"outcome": "passed"')


def test_a_crash_names_the_signal_and_the_test():
    raw = run_of("passed", done=False) + lines({"event": "start", "test": "test_b"})
    verdict = judge(read_reports(raw, NONCE, PLAN), PLAN, stop=None, returncode=SIGNAL_STATUS_BASE + signal.SIGSEGV)
    assert verdict.detail == "killed by SIGSEGV during test_b"
