"""research/data/tasks/builder.py: the suites as tfds array_record datasets."""

import os

import pytest

from research.data.tasks import SPLITS, SUITES, generate_problems
from research.data.tasks.builder import task_source


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_round_trip_equals_the_generators(tmp_path, suite):
    for split in SPLITS:
        problems = task_source(suite, split, str(tmp_path), count=3, seed=5)
        assert len(problems) == 3
        assert list(problems) == generate_problems(suite, split, 3, seed=5)
        assert problems[-1] == problems[2]
    assert os.path.isdir(tmp_path / "procedural_tasks" / f"{suite}_3_seed5")


def test_a_built_dataset_is_reused_and_other_counts_get_their_own(tmp_path):
    first = task_source("countdown", "train", str(tmp_path), count=2)
    info = tmp_path / "procedural_tasks" / "countdown_2_seed0" / "1.0.0" / "dataset_info.json"
    built_at = info.stat().st_mtime_ns
    assert list(task_source("countdown", "train", str(tmp_path), count=2)) == list(first)
    assert info.stat().st_mtime_ns == built_at
    assert list(task_source("countdown", "train", str(tmp_path), count=4))[:2] == list(first)


def test_out_of_range_index_raises(tmp_path):
    problems = task_source("arithmetic", "held_out", str(tmp_path), count=1)
    with pytest.raises(IndexError, match="problem 1 out of range for 1"):
        problems[1]


@pytest.mark.parametrize("suite, split, count, message", [
    ("poetry", "train", 1, "unknown suite"),
    ("countdown", "validation", 1, "unknown split"),
    ("countdown", "train", 0, "count must be a positive integer"),
])
def test_bad_arguments_raise_naming_them(tmp_path, suite, split, count, message):
    with pytest.raises(ValueError, match=message):
        task_source(suite, split, str(tmp_path), count=count)
