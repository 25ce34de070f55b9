"""The ahead-of-time TPU compiles of these tests run without JAX's persistent cache."""

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def without_persistent_cache():
    """JAX's persistent cache cannot read back executables compiled without a TPU attached."""
    previous = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", previous)
