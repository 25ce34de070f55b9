"""experiments/rl_comparison.py --quick: GRPO, k1.5 and PPO from one SFT start on the same sampling budget, and
GRPO from a wider start fine-tuned on bytes and from a start on the coding suite."""

from experiments import rl_comparison, rl_runs
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Estimate
from tests.experiments.quick import run_quick


def test_every_method_samples_the_same_responses_from_the_shared_sft_start(tmp_path):
    _, outcome = run_quick("rl_comparison", tmp_path)
    assert [row["method"] for row in outcome.rows] == ["SFT start", "GRPO", "k1.5", "PPO", "SFT start, 4x128 on bytes",
                                                       "GRPO, 4x128 on bytes", "SFT start, coding", "GRPO, coding"]
    grpo, kimi, ppo = outcome.rows[1:4]
    assert grpo["sampled_responses"] == kimi["sampled_responses"] == ppo["sampled_responses"] == 2 * 2 * 4
    assert all(0 <= row["held_out_pass@1"] <= 1 for row in outcome.rows)
    shared = tmp_path / "work" / "rl_runs" / "seed_0"
    assert all((shared / run / "results.json").exists()
               for run in ("sft_quick", "grpo_wide_bytes_quick", "grpo_coding_quick"))
    assert rl_runs.run_config(shared / "grpo_coding_quick").rl.suites == ("coding",)


def test_judge_reads_a_held_out_gain_beyond_one_problem():
    def numbers(**values):
        return {name: Estimate(value, 0.0, (value,)) for name, value in values.items()}
    starts = dict(sft_held_out=0.1, sft_in_domain=0.3, grpo_length=50.0, kimi_length=40.0, ppo_length=45.0,
                  wide_bytes_sft_held_out=0.2, wide_bytes_sft_in_domain=0.5, wide_bytes_grpo_length=90.0,
                  wide_bytes_grpo_in_domain=0.5, coding_sft_held_out=0.2, coding_sft_in_domain=0.9,
                  coding_grpo_length=150.0, coding_grpo_in_domain=0.9)
    unchanged = dict(grpo_in_domain=0.3, kimi_in_domain=0.3, ppo_in_domain=0.3, coding_grpo_held_out=0.2, **starts)
    same = rl_comparison.judge(numbers(grpo_held_out=0.1, kimi_held_out=0.1, ppo_held_out=0.1,
                                       wide_bytes_grpo_held_out=0.2, **unchanged))
    better = rl_comparison.judge(numbers(grpo_held_out=0.2, kimi_held_out=0.15, ppo_held_out=0.2, grpo_in_domain=0.4,
                                         kimi_in_domain=0.4, ppo_in_domain=0.4, wide_bytes_grpo_held_out=0.3,
                                         coding_grpo_held_out=0.3, **starts))
    bytes_only = rl_comparison.judge(numbers(grpo_held_out=0.1, kimi_held_out=0.1, ppo_held_out=0.1,
                                             wide_bytes_grpo_held_out=0.3, **unchanged))
    assert same["rl_raises_held_out"].status == DOES_NOT_HOLD and better["rl_raises_held_out"].status == HOLDS
    assert bytes_only["rl_raises_held_out"].status == HOLDS_IN_PART
    assert "best: GRPO, 4x128 on bytes, +0.100" in bytes_only["rl_raises_held_out"].reason
    assert same["k15_matches_grpo"].status == DOES_NOT_HOLD  # neither learns: nothing to compare
    assert better["k15_matches_grpo"].status == HOLDS  # equal in-domain gains
