"""Reading an untrusted child's pipes with a cap on each and a deadline.

One `select` loop over the pipes and the child's pidfd (readable once the child exits), so
neither a child that writes without end nor one whose descendants hold its pipes open keeps
the caller waiting: collection stops at the deadline, when a pipe goes over its cap (at most
cap + one read is ever held), or when the child exits (what its pipes already hold is then
read, still capped).
"""

import dataclasses
import os
import selectors
import time

READ_BYTES = 65536


@dataclasses.dataclass(frozen=True)
class Collected:
    """What each pipe delivered (at most its cap) and why collection stopped: None (the child
    exited), "timeout", or the name of the pipe that went over its cap."""

    data: dict[str, bytes]
    stop: str | None


def _read(fd: int, buffer: bytearray, cap: int) -> bool:
    """Append one read of `fd` to `buffer`, keeping at most cap + 1 bytes; False at end of file."""
    try:
        chunk = os.read(fd, READ_BYTES)
    except BlockingIOError:
        return True
    buffer += chunk[:cap + 1 - len(buffer)]
    return bool(chunk)


def collect(process_fd: int, pipes: dict[str, int], caps: dict[str, int], deadline: float) -> Collected:
    """Read `pipes` ({name: fd}) until `deadline` (time.monotonic()), a cap of `caps` is exceeded,
    or `process_fd` (a pidfd) reports the exit."""
    buffers = {name: bytearray() for name in pipes}

    def result(stop):
        return Collected({name: bytes(buffer[:caps[name]]) for name, buffer in buffers.items()}, stop)

    def over_cap():
        return next((name for name, buffer in buffers.items() if len(buffer) > caps[name]), None)

    with selectors.DefaultSelector() as selector:
        for name, fd in pipes.items():
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ, name)
        selector.register(process_fd, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                if key.fd == process_fd:
                    return result(_drain(selector, process_fd, buffers, caps))
                if not _read(key.fd, buffers[key.data], caps[key.data]):
                    selector.unregister(key.fd)
                if over_cap():
                    return result(over_cap())
    return result("timeout")


def _drain(selector, process_fd: int, buffers: dict[str, bytearray], caps: dict[str, int]) -> str | None:
    """After the exit: read what the pipes hold until each is empty or over its cap (then its name)."""
    for key in list(selector.get_map().values()):
        if key.fd == process_fd:
            continue
        buffer, cap = buffers[key.data], caps[key.data]
        while len(buffer) <= cap:
            size = len(buffer)
            if not _read(key.fd, buffer, cap) or len(buffer) == size:
                break
        if len(buffer) > cap:
            return key.data
    return None
