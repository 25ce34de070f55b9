"""research/rl/sandbox.py: verdicts on honest programs, and attacks that must stay inside.

Every attack runs through the sandbox with a 1 s timeout. Runs print their own uid first, so a
test can check afterwards that no process of that uid is left on the machine."""

import dataclasses
import json
import os
import resource
import socket
import time
import uuid

import pytest

from research.rl import sandbox, sandbox_isolation

TIMEOUT_S = 1.0
SLACK_S = 1.0  # start-up and clean-up on a loaded machine
PRINT_UID = "import os\nprint(os.getuid(), flush=True)\n"


def processes_of(uid: int) -> list[int]:
    """Pids (zombies included) whose real uid is `uid`."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/status") as status:
                uid_line = next(line for line in status if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) == uid:
            pids.append(int(entry))
    return pids


def run_uid(result: sandbox.SandboxResult) -> int:
    return int(result.stdout.split()[0])


@pytest.fixture(params=["detected", "without namespaces"])
def isolation_mode(request, monkeypatch):
    """Each test using it runs twice: with this machine's isolation and with the namespaces
    turned off, where the rlimits and the private user alone must hold."""
    if request.param == "without namespaces":
        detected = sandbox_isolation.detect()
        monkeypatch.setattr(sandbox_isolation, "detect", lambda: dataclasses.replace(detected, namespaces=()))
    return request.param


def test_correct_code_passes_and_its_output_is_kept():
    code = "def add(a, b):\n    print('adding', a, b)\n    return a + b\n"
    tests = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n\ndef test_zero():\n    assert add(0, 0) == 0\n"
    result = sandbox.run_tests(code, tests, timeout_s=TIMEOUT_S)
    assert (result.status, result.passed) == ("passed", True)
    assert (result.tests_passed, result.tests_total, result.failed_test) == (3, 3, None)
    assert result.stdout.splitlines() == ["adding 1 2", "adding -1 1", "adding 0 0"]
    assert result.isolation == sandbox.isolation()


def test_failing_assert_is_failed_and_named():
    tests = "assert add(1, 2) == 3\nassert add(2, 2) == 5, 'two and two'\n\ndef test_raises():\n    1 / 0\n"
    result = sandbox.run_tests("def add(a, b):\n    return a + b\n", tests, timeout_s=TIMEOUT_S)
    assert (result.status, result.passed, result.tests_passed, result.tests_total) == ("failed", False, 1, 3)
    assert result.failed_test == "assert at line 2"
    assert result.detail == "AssertionError: two and two (tests.py line 2)"


@pytest.mark.parametrize("code, detail", [("def add(a, b)\n    return a + b\n", "code: SyntaxError"),
                                          ("raise RuntimeError('at import')\n", "code: RuntimeError: at import")])
def test_code_that_does_not_compile_or_raises_is_an_error(code, detail):
    result = sandbox.run_tests(code, "assert add(1, 2) == 3\n", timeout_s=TIMEOUT_S)
    assert (result.status, result.tests_passed, result.failed_test) == ("error", 0, None)
    assert result.detail.startswith(detail)


def test_infinite_loop_times_out_on_time():
    start = time.monotonic()
    result = sandbox.run_tests("def spin():\n    while True:\n        pass\n", "def test_spin():\n    spin()\n",
                               timeout_s=TIMEOUT_S)
    assert result.status == "timeout" and result.failed_test == "test_spin"
    assert TIMEOUT_S <= time.monotonic() - start < TIMEOUT_S + SLACK_S


def test_fork_bomb_is_contained_and_leaves_no_process():
    code = PRINT_UID + "def bomb():\n    while True:\n        try:\n            os.fork()\n        except OSError:\n" \
                       "            pass\n"
    start = time.monotonic()
    result = sandbox.run_tests(code, "def test_bomb():\n    bomb()\n", timeout_s=TIMEOUT_S)
    assert result.status == "timeout"
    assert time.monotonic() - start < TIMEOUT_S + SLACK_S
    assert processes_of(run_uid(result)) == []


def test_process_limit_holds(isolation_mode):
    """The run's user can own MAX_PROCESSES processes: the sandbox's two and the code's."""
    code = PRINT_UID + (
        "import signal\n"
        "def count_children():\n"
        "    children = []\n"
        "    while True:\n"
        "        try:\n"
        "            child = os.fork()\n"
        "        except OSError:\n"
        "            break\n"
        "        if child == 0:\n"
        "            signal.pause()\n"
        "        children.append(child)\n"
        "    for child in children:\n"
        "        os.kill(child, signal.SIGKILL)\n"
        "        os.waitpid(child, 0)\n"
        "    return len(children)\n")
    tests = f"assert count_children() == {sandbox.MAX_PROCESSES - 2}\n"
    result = sandbox.run_tests(code, tests, timeout_s=TIMEOUT_S * 3)
    assert result.status == "passed", result.detail
    assert processes_of(run_uid(result)) == []


@pytest.mark.parametrize("bomb", ["blob = bytearray(10**10)\n",
                                  "def grow():\n    chunks = []\n    while True:\n        chunks.append(bytearray(2**20))\n"
                                  "grow()\n"])
def test_memory_bomb_is_memory(isolation_mode, bomb):
    result = sandbox.run_tests(bomb, "assert True\n", timeout_s=TIMEOUT_S * 3, memory_mb=64)
    assert result.status == "memory" and not result.passed


def test_memory_bomb_inside_a_test_names_the_test():
    code = "def grow():\n    chunks = []\n    while True:\n        chunks.append(bytearray(2**20))\n"
    result = sandbox.run_tests(code, "assert True\ndef test_grow():\n    grow()\n", timeout_s=TIMEOUT_S * 3,
                               memory_mb=64)
    assert (result.status, result.failed_test, result.tests_passed) == ("memory", "test_grow", 1)


def test_writes_outside_the_sandbox_fail(isolation_mode, tmp_path):
    name = f"sandbox-escape-{uuid.uuid4().hex}"
    targets = [str(tmp_path / name), f"/root/{name}", f"/work/{name}", f"/tmp/{name}", f"/dev/shm/{name}"]
    code = (
        "import os\n"
        "def escapes(paths):\n"
        "    written = []\n"
        "    for path in paths:\n"
        "        try:\n"
        "            with open(path, 'w') as file:\n"
        "                file.write('x')\n"
        "            written.append(path)\n"
        "        except OSError:\n"
        "            pass\n"
        "        try:\n"
        "            os.symlink(path, 'link')\n"
        "            with open('link', 'w') as file:\n"
        "                file.write('x')\n"
        "            written.append('link to ' + path)\n"
        "        except OSError:\n"
        "            pass\n"
        "        finally:\n"
        "            os.path.lexists('link') and os.remove('link')\n"
        "    return written\n"
        "def libc_escapes(paths):\n"
        "    try:\n"
        "        import ctypes\n"
        "    except PermissionError:\n"
        "        return []\n"
        "    libc = ctypes.CDLL(None)\n"
        "    return [path for path in paths if libc.open(path.encode(), os.O_WRONLY | os.O_CREAT, 0o600) >= 0]\n")
    tests = (f"assert escapes({targets!r}) == []\n"
             f"assert libc_escapes({targets!r}) == []\n"
             "assert escapes(['inside.txt']) == ['inside.txt', 'link to inside.txt']\n")
    result = sandbox.run_tests(code, tests, timeout_s=TIMEOUT_S * 3)
    assert result.status == "passed", result.detail
    assert not any(os.path.lexists(target) for target in targets)


def test_socket_connection_never_arrives(isolation_mode):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            "import os, socket\n"
            "def connects(port):\n"
            "    try:\n"
            "        socket.create_connection(('127.0.0.1', port), timeout=0.5).close()\n"
            "        return True\n"
            "    except OSError:\n"
            "        return False\n"
            "def libc_connects(port):\n"
            "    try:\n"
            "        import ctypes, struct\n"
            "    except PermissionError:\n"
            "        return False\n"
            "    libc = ctypes.CDLL(None)\n"
            "    fd = libc.socket(2, 1, 0)\n"
            "    address = struct.pack('!HH4s8x', 2, port, bytes([127, 0, 0, 1]))\n"
            "    return libc.connect(fd, address, len(address)) == 0\n")
        tests = f"assert not connects({port})\nassert not libc_connects({port})\n"
        result = sandbox.run_tests(code, tests, timeout_s=TIMEOUT_S * 3)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert result.status == "passed", result.detail


def test_huge_print_is_capped():
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = sandbox.run_tests("print('x' * 100_000_000)\n", "assert True\n", timeout_s=TIMEOUT_S * 3)
    peak_growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert result.status == "output_limit" and not result.passed
    assert len(result.stdout) == sandbox.MAX_OUTPUT_BYTES
    assert peak_growth_kb < 20 * 1024


def test_printing_or_writing_fake_reports_cannot_pass():
    fake = '{"event": "done"}\\n'
    code = ("import os, sys\n"
            f"print('{fake}' * 3)\n"
            "for fd in range(3, 64):\n"
            "    try:\n"
            f"        os.write(fd, b'{fake}')\n"
            "    except OSError:\n"
            "        pass\n")
    result = sandbox.run_tests(code, "assert False\n", timeout_s=TIMEOUT_S)
    assert result.status == "error" and "nonce" in result.detail


def test_exiting_early_is_an_error():
    result = sandbox.run_tests("import os\nos._exit(0)\n", "assert True\n", timeout_s=TIMEOUT_S)
    assert (result.status, result.tests_passed) == ("error", 0)


def test_detached_child_neither_delays_the_verdict_nor_survives():
    code = PRINT_UID + "import time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\n"
    result = sandbox.run_tests(code, "assert True\n", timeout_s=TIMEOUT_S * 3)
    assert result.status == "passed" and result.wall_s < TIMEOUT_S * 3
    assert processes_of(run_uid(result)) == []


def test_environment_is_minimal_and_directory_removed():
    code = "import os, json\nprint(json.dumps([os.getcwd(), dict(os.environ), os.getuid()]))\n"
    result = sandbox.run_tests(code, "assert True\n", timeout_s=TIMEOUT_S)
    directory, environment, uid = json.loads(result.stdout)
    assert sorted(environment) == ["HOME", "LC_ALL", "PATH", "TMPDIR"]
    assert environment["HOME"] == environment["TMPDIR"] == directory
    assert uid != os.getuid()
    assert not os.path.exists(directory)


def test_run_many_returns_each_programs_own_result_in_order():
    jobs = [(f"def f():\n    return {i}\n", f"assert f() == {i if i % 3 else -1}\n") for i in range(9)]
    jobs.append(("while True:\n    pass\n", "assert True\n"))
    results = sandbox.run_many(jobs, workers=4, timeout_s=TIMEOUT_S)
    assert [result.status for result in results] == ["failed" if i % 3 == 0 else "passed" for i in range(9)] + [
        "timeout"]


@pytest.mark.parametrize("kwargs, message", [
    ({"code": 3}, "code must be a str"),
    ({"tests": b"assert True"}, "tests must be a str"),
    ({"tests": "assert (\n"}, "tests is not a valid tests module"),
    ({"tests": "x = 1\n"}, "tests has no top-level assert"),
    ({"tests": "def test_a(x):\n    pass\n"}, "must take no arguments"),
    ({"timeout_s": 0}, "timeout_s must be a positive"),
    ({"timeout_s": float("nan")}, "timeout_s must be a positive"),
    ({"memory_mb": 0}, "memory_mb must be a positive int"),
    ({"memory_mb": 256.0}, "memory_mb must be a positive int"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    arguments = {"code": "x = 1\n", "tests": "assert x == 1\n", **kwargs}
    with pytest.raises(ValueError, match=message):
        sandbox.run_tests(arguments.pop("code"), arguments.pop("tests"), **arguments)


@pytest.mark.parametrize("jobs, kwargs, message", [
    ([("x = 1", "assert x == 1"), "x = 1"], {}, r"jobs\[1\] must be a \(code, tests\) tuple"),
    ([("x = 1", "assert x == 1"), ("x = 1", 7)], {}, r"jobs\[1\]: tests must be a str"),
    ([("x = 1", "assert x == 1")], {"workers": 0}, "workers must be a positive int"),
])
def test_run_many_checks_every_job_first(jobs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sandbox.run_many(jobs, **kwargs)
