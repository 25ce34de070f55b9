"""The ahead-of-time TPU compiles of these tests run without JAX's persistent cache."""

import pytest


@pytest.fixture(autouse=True)
def every_tools_test_compiles_for_tpu(without_persistent_cache):
    """tests/conftest.py's `without_persistent_cache` for every test here."""
    yield
