"""research/data/corpus.py (and prepare.py): the offline tfds corpora."""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from research.data import corpus


def read_split(name: str, split: str, data_dir: str) -> dict[str, str]:
    key = corpus.CORPORA[name].KEY
    return {example[key]: example["text"] for example in corpus.data_source(name, split, data_dir)}


def test_pydoc_topics_holds_every_topic_once_in_disjoint_splits(data_dir, pydoc_texts):
    train = read_split("pydoc_topics", "train", data_dir)
    validation = read_split("pydoc_topics", "validation", data_dir)
    assert not train.keys() & validation.keys()
    assert {**train, **validation} == pydoc_texts
    assert len(train) + len(validation) == len(pydoc_texts)
    assert sum(map(len, validation.values())) >= 15_000  # enough text for an eval


def test_python_stdlib_holds_the_library_sources_without_test_suites(data_dir):
    expected = corpus.python_stdlib_texts()
    train = read_split("python_stdlib", "train", data_dir)
    validation = read_split("python_stdlib", "validation", data_dir)
    assert not train.keys() & validation.keys()
    assert {**train, **validation} == expected
    assert "json/decoder.py" in expected and "os.py" in expected
    for path in expected:
        assert path.endswith(".py")
        assert not set(path.split("/")[:-1]) & corpus.EXCLUDED_STDLIB_DIRS, path
    validation_share = sum(map(len, validation.values())) / sum(map(len, expected.values()))
    assert 0.05 <= validation_share < 0.2


def test_validation_keys_are_the_hash_ranked_prefix_reaching_the_fraction():
    texts = {f"doc{i}": "x" * (i + 1) for i in range(200)}
    chosen = corpus.validation_keys(texts, fraction=0.1)
    total = sum(map(len, texts.values()))
    size = sum(len(texts[key]) for key in chosen)
    assert size >= 0.1 * total
    largest = max(chosen, key=lambda key: len(texts[key]))
    assert size - len(texts[largest]) < 0.1 * total  # no smaller prefix would do
    assert corpus.validation_keys(dict(reversed(texts.items())), fraction=0.1) == chosen


@pytest.mark.parametrize("name, split, message", [
    ("pydoc", "train", r"unknown corpus 'pydoc'.*pydoc_topics.*python_stdlib"),
    ("pydoc_topics", "test", r"unknown split 'test'.*train.*validation"),
])
def test_unknown_corpus_or_split_raises(data_dir, name, split, message):
    with pytest.raises(ValueError, match=message):
        corpus.data_source(name, split, data_dir)


def test_a_half_built_dataset_is_detected_and_rebuilt(tmp_path):
    data_dir = str(tmp_path)
    original = read_split("pydoc_topics", "validation", data_dir)
    dataset_dir = tmp_path / "pydoc_topics" / "1.0.0"
    (dataset_dir / "pydoc_topics-validation.array_record-00000-of-00001").unlink()
    leftover = tmp_path / "pydoc_topics" / "incomplete.ABC123_1.0.0"
    leftover.mkdir()
    assert read_split("pydoc_topics", "validation", data_dir) == original
    assert not leftover.exists()
    (dataset_dir / "dataset_info.json").unlink()
    assert read_split("pydoc_topics", "validation", data_dir) == original


def test_a_corrupt_dataset_raises_naming_its_directory(tmp_path):
    corpus.data_source("pydoc_topics", "train", str(tmp_path))
    shard = tmp_path / "pydoc_topics" / "1.0.0" / "pydoc_topics-train.array_record-00000-of-00001"
    shard.write_bytes(b"\0" * shard.stat().st_size)
    with pytest.raises(RuntimeError, match=f"{tmp_path}/pydoc_topics/1.0.0.*broken"):
        corpus.data_source("pydoc_topics", "train", str(tmp_path))


def test_a_shard_damaged_in_the_middle_raises_naming_it_and_rebuilds_once_deleted(tmp_path):
    original = read_split("pydoc_topics", "train", str(tmp_path))
    dataset_dir = tmp_path / "pydoc_topics" / "1.0.0"
    shard = dataset_dir / "pydoc_topics-train.array_record-00000-of-00001"
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 3)
        f.write(b"\xff" * 64)
    examples = corpus.data_source("pydoc_topics", "train", str(tmp_path))  # both ends still read
    with pytest.raises(RuntimeError, match=f"^{re.escape(str(shard))}: example [0-9]+ cannot be read "
                                           ".*Riegeli.*delete that directory") as raised:
        list(examples)
    assert repr(str(dataset_dir)) in str(raised.value)
    shutil.rmtree(dataset_dir)  # what the message says to do
    assert read_split("pydoc_topics", "train", str(tmp_path)) == original


def test_an_unreadable_example_is_blamed_on_its_own_shard():
    records = [{"text": b"fine"}] * 3 + [{"text": b"\xff not utf-8"}] * 4
    examples = corpus.TextExamples(records, [("shard-a", 3), ("shard-b", 4)], "/data/corpus/1.0.0")
    assert examples[2] == {"text": "fine"}
    for index in (3, 6, -1):
        with pytest.raises(RuntimeError, match="^shard-b: example [36] cannot be read .*utf-8.*'/data/corpus/1.0.0'"):
            examples[index]


def test_a_data_dir_that_cannot_be_written_raises_naming_it(tmp_path):
    (tmp_path / "a_file").write_text("")
    data_dir = str(tmp_path / "a_file" / "data")
    with pytest.raises(OSError, match=f"data dir '{data_dir}' is not writable"):
        corpus.data_source("pydoc_topics", "train", data_dir)


def test_two_processes_building_at_once_both_get_the_whole_dataset(tmp_path):
    script = textwrap.dedent(f"""
        from research.data import corpus
        examples = corpus.data_source("pydoc_topics", "train", {str(tmp_path)!r})
        print(len(examples), sum(len(example["text"]) for example in examples))
    """)
    processes = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    expected = read_split("pydoc_topics", "train", str(tmp_path))
    assert outputs == [f"{len(expected)} {sum(map(len, expected.values()))}\n"] * 2
    assert sorted(os.listdir(tmp_path / "pydoc_topics")) == ["1.0.0"]


def test_default_data_dir_follows_the_environment(monkeypatch):
    monkeypatch.setenv("RESEARCH_DATA_DIR", "/somewhere/data")
    assert corpus.default_data_dir() == "/somewhere/data"
    monkeypatch.delenv("RESEARCH_DATA_DIR")
    assert corpus.default_data_dir() == os.path.expanduser("~/.cache/research/data")
