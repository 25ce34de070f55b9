"""The machine a benchmark ran on: its name, its load, and the matmul rate MFU is measured against."""

import os
import platform

import jax
import jax.numpy as jnp

from scripts.timing import interleaved_best_seconds

PEAK_MATMUL_SIZE = 2048  # float32 2048² matmuls: 17 GFLOP each, large enough to reach the BLAS peak
PEAK_MATMUL_REPEATS = 10


def describe_hardware() -> str:
    """"CPU (x86_64, 2 cores)" or "1 × NVIDIA H200 (gpu)"."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return f"{jax.device_count()} × {device.device_kind} ({device.platform})"


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages with the running/total task counts, as `/proc/loadavg`
    says them (the first three from `os.getloadavg` where there is no /proc)."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())


def matmul_peak_flops(size: int = PEAK_MATMUL_SIZE, repeats: int = PEAK_MATMUL_REPEATS) -> float:
    """2·size³ / t for t the fastest of `repeats` jitted float32 `size`² matmuls on the default device
    (after a compiled warm-up): the one least slowed by other load, so the rate nearest the peak."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    seconds = interleaved_best_seconds({"matmul": lambda: matmul(a)}, repeats)["matmul"]
    return 2 * size**3 / seconds
