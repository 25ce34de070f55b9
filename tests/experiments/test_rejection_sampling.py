"""experiments/rejection_sampling.py --quick: the chain trained, samples scored, the best written as SFT data."""

import json

from tests.experiments.quick import run_quick


def test_samples_are_scored_and_the_best_written_as_conversations(tmp_path):
    report, outcome = run_quick("rejection_sampling", tmp_path)
    assert [row["n"] for row in outcome.rows] == [1, 2, 4]
    assert all(row["max"] >= row["median"] for row in outcome.rows)
    assert outcome.rows[0]["gain"] == 0.0  # the best of one sample is that sample
    for line in (tmp_path / "work" / "rejection_sampling" / "seed_0" / "best.jsonl").read_text().splitlines():
        assert [m["role"] for m in json.loads(line)["messages"]] == ["user", "assistant"]
