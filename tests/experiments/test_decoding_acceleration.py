"""experiments/decoding_acceleration.py: the quick run trains a pair, measures and writes the report's tables."""

import re

import pytest

from research.decoding.speculative_theory import expected_tokens_per_target_call
from tests.experiments.quick import run_quick

SPECULATIVE_ROW = re.compile(r"\| speculative γ=(\d) \| [\d.]+ \| [\d.]+× \(([\d.]+)\) \| ([\d.]+) \| "
                             r"([\d.]+) \(([\d.]+)\) \| ([\d.]+) \|")


def test_the_quick_experiment_writes_measured_cells_beside_the_formulas(tmp_path):
    report, outcome = run_quick("decoding_acceleration", tmp_path)
    for heading in ("## Speculative sampling", "### Temperature 0", "### Leviathan et al., Table 1", "## Medusa"):
        assert heading in outcome.markdown
    assert "| generate (target) | " in outcome.markdown and "| generate (draft) | " in outcome.markdown
    rows = SPECULATIVE_ROW.findall(outcome.markdown)
    assert [int(row[0]) for row in rows] == [2]
    for gamma, _, alpha, tokens, formula_tokens, acceptance in rows:
        assert 0 <= float(alpha) <= 1 and 0 <= float(acceptance) <= 1
        assert 1 <= float(tokens) <= int(gamma) + 1
        assert float(formula_tokens) == pytest.approx(expected_tokens_per_target_call(float(alpha), int(gamma)),
                                                      abs=0.01)
    assert "| 0.8 | 5 | 3.69× | 3.69× |" in outcome.markdown and "| 0.9 | 10 | 6.86× | 6.86× |" in outcome.markdown
    assert outcome.headline["alpha_t0"] == pytest.approx(float(rows[0][2]), abs=5e-4)
    assert outcome.headline["medusa_tokens_per_call"] >= 1 and 0 <= outcome.headline["medusa_head1_top1"] <= 1
    assert {row["section"] for row in outcome.rows} == {"speculative", "medusa"}
    assert report["verdicts"]["medusa"]["reason"].startswith("best tree's mean accepted length")
