"""experiments/decoding_acceleration.py: the quick run trains a pair, measures and writes the report's tables."""

import re

import pytest

from experiments import decoding_acceleration as experiment
from research.decoding.speculative_theory import expected_tokens_per_target_call

SPECULATIVE_ROW = re.compile(r"\| speculative γ=(\d) \| [\d.]+ \| [\d.]+× \(([\d.]+)\) \| ([\d.]+) \| "
                             r"([\d.]+) \(([\d.]+)\) \| ([\d.]+) \|")


def test_the_quick_experiment_writes_measured_cells_beside_the_formulas(tmp_path):
    output = tmp_path / "out" / "decoding_acceleration"
    argv = ["--quick", "--workdir", str(tmp_path / "runs"), "--output", str(output)]
    experiment.main(argv)
    report = output.with_suffix(".md").read_text()
    for heading in ("## Speculative sampling", "### Temperature 0", "### Leviathan et al., Table 1"):
        assert heading in report
    assert "| generate (target) | " in report and "| generate (draft) | " in report
    rows = SPECULATIVE_ROW.findall(report)
    assert [int(row[0]) for row in rows] == [2]
    for gamma, _, alpha, tokens, formula_tokens, acceptance in rows:
        assert 0 <= float(alpha) <= 1 and 0 <= float(acceptance) <= 1
        assert 1 <= float(tokens) <= int(gamma) + 1
        assert float(formula_tokens) == pytest.approx(expected_tokens_per_target_call(float(alpha), int(gamma)),
                                                      abs=0.01)
    assert "| 0.8 | 5 | 3.69× | 3.69× |" in report and "| 0.9 | 10 | 6.86× | 6.86× |" in report

    # the trained pair stays in the workdir; a run of another length there is refused
    with pytest.raises(ValueError, match="another config"):
        experiment.main([*argv, "--steps", "12"])
