"""Test set-up, before jax is imported anywhere: 8 fake CPU devices, a shared compilation
cache (the tiny experiments recompile the same programs in many tests and subprocesses),
and one temporary data dir per session, never the home dir."""

import os
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "research-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("RESEARCH_DATA_DIR", tempfile.mkdtemp(prefix="research-test-data-"))
# Ahead-of-time TPU compiles load libtpu in every pytest-xdist worker; let them share it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@pytest.fixture
def without_persistent_cache():
    """JAX's persistent cache off for a test compiling for TPU chips that are not attached: it could write
    their executables but never read them back (research/tools/aot.py `persistent_cache_off`)."""
    from research.tools.aot import persistent_cache_off

    with persistent_cache_off():
        yield
