"""Shared fixtures: one data dir per test session, built once, never the user's home."""

import ml_collections
import pytest

from research.data import corpus


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A session-wide data dir holding both corpora (built on first use)."""
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def pydoc_texts() -> dict[str, str]:
    return corpus.pydoc_topics_texts()


def _data_config(data_dir: str, tokenizer: str, vocab_size: int) -> ml_collections.ConfigDict:
    """A `config.data` for pydoc_topics, as the configs define it."""
    return ml_collections.ConfigDict(
        dict(name="pydoc_topics", data_dir=data_dir, tokenizer=tokenizer, vocab_size=vocab_size)
    )


@pytest.fixture(scope="session")
def byte_config(data_dir) -> ml_collections.ConfigDict:
    return _data_config(data_dir, "byte", 259)


@pytest.fixture(scope="session")
def sentencepiece_config(data_dir) -> ml_collections.ConfigDict:
    return _data_config(data_dir, "sentencepiece", 512)
