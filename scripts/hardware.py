"""One line naming the machine a benchmark ran on, for its results table."""

import os
import platform

import jax


def describe_hardware() -> str:
    """"CPU (x86_64, 2 cores)" or "1 × NVIDIA H200 (gpu)"."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return f"{jax.device_count()} × {device.device_kind} ({device.platform})"
