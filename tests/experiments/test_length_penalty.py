"""experiments/length_penalty.py --quick: k1.5 with and without its length reward, then long2short."""

from experiments import length_penalty
from experiments.metadata import DOES_NOT_HOLD, HOLDS, HOLDS_IN_PART, Estimate
from experiments.rl_runs import run_config
from tests.experiments.quick import run_quick


def test_three_arms_and_long2short_starts_from_the_length_rewarded_run(tmp_path):
    report, outcome = run_quick("length_penalty", tmp_path)
    assert [row["arm"] for row in outcome.rows] == [label for _, label, _, _ in length_penalty.ARMS]
    runs = tmp_path / "work" / "rl_runs" / "seed_0"
    config = run_config(runs / "kimi_long2short_quick")
    assert config.init_from.path == str(runs / "kimi_quick") and config.rl.long2short
    assert run_config(runs / "kimi_no_length_quick").rl.length_reward.weight == 0.0


def test_judge_wants_fewer_tokens_at_about_the_same_accuracy():
    def arms(lengths, accuracies):
        names = [name for name, _, _, _ in length_penalty.ARMS]
        numbers = {f"{n}_length": v for n, v in zip(names, lengths)}
        numbers.update({f"{n}_in_domain": v for n, v in zip(names, accuracies)})
        return {name: Estimate(v, 0.0, (v,)) for name, v in numbers.items()}
    verdicts = length_penalty.judge(arms((100.0, 80.0, 80.0), (0.5, 0.5, 0.5)))
    assert verdicts["length_reward_shortens"].status == HOLDS
    assert verdicts["long2short_shortens"].status == DOES_NOT_HOLD  # not shorter
    worse = length_penalty.judge(arms((100.0, 80.0, 60.0), (0.5, 0.5, 0.2)))
    assert worse["long2short_shortens"].status == HOLDS_IN_PART
