"""experiments/tool_use.py: the traces it fine-tunes on, its verdicts on made-up numbers, and the experiment
end to end at its smallest."""

import numpy as np
import pytest

from experiments import tool_use as experiment
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Estimate
from research.data.tasks import generate_problems
from research.data.tokenizer import ByteTokenizer
from research.rl.tool_calls import tool_turn
from tests.experiments.quick import run_quick

TOKENIZER = ByteTokenizer(vocab_size=265)


def test_the_loss_falls_on_the_models_turns_and_never_on_the_prompt_or_the_tools_output():
    problem = generate_problems("tool_tasks", "train", 1, seed=0)[0]
    tool = experiment.training_example(TOKENIZER, problem, with_tools=True)
    direct = experiment.training_example(TOKENIZER, problem, with_tools=False)
    rows = experiment.training_rows([tool, direct], seq_len=len(tool[0]) - 1)
    weighted = [TOKENIZER.decode(rows["targets"][row][rows["weights"][row] > 0]) for row in range(2)]
    assert problem.inputs["program"] in weighted[0] and weighted[0].endswith(problem.answer + "<|end|>")
    assert "python output" not in weighted[0] and problem.prompt not in weighted[0]
    assert weighted[1] == f"{problem.reasoning}</think>{problem.answer}<|end|>"
    unweighted = TOKENIZER.decode(rows["targets"][0][(rows["weights"][0] == 0) & (rows["segment_ids"][0] > 0)])
    assert unweighted.endswith(tool_turn(problem.answer + "\n"))


def estimates(**values):
    return {key: Estimate(value, 0.0, (value,)) for key, value in values.items()}


@pytest.mark.parametrize("with_tools, without, status", [(0.8, 0.1, HOLDS), (0.3, 0.2, HOLDS_IN_PART),
                                                         (0.1, 0.1, DOES_NOT_HOLD)])
def test_verdicts_weigh_the_gap_against_two_standard_errors(with_tools, without, status):
    verdicts = experiment.judge(estimates(
        accuracy_with_tools=with_tools, accuracy_without_tools=without, held_out_accuracy_with_tools=with_tools,
        held_out_accuracy_without_tools=without, problems=32.0))
    assert {verdict.status for verdict in verdicts.values()} == {status}
    assert f"{with_tools:.3f}" in verdicts["tools_raise_accuracy"].reason


def test_the_quick_run_reports_both_modes_on_both_splits_and_a_verdict_per_claim(tmp_path):
    report, outcome = run_quick("tool_use", tmp_path)
    assert {(row["split"], row["mode"]) for row in outcome.rows} == {
        (split, mode) for split in ("in_distribution", "held_out") for mode in ("with_tools", "without_tools")}
    for row in outcome.rows:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["tool_call_rate"] <= 1 and row["model_tokens"] > 0
        assert row["mode"] == "with_tools" or row["tool_call_rate"] == 0
    assert outcome.headline["problems"] == experiment.QUICK.problems and np.isfinite(outcome.headline["final_loss"])
    assert all(path.exists() and path.suffix == ".png" for path in outcome.plots)
    assert "| in_distribution | with tools |" in outcome.markdown
    assert set(report["verdicts"]) == {claim.key for claim in experiment.EXPERIMENT.claims}
