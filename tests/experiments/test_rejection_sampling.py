"""experiments/rejection_sampling.py on two tiny runs: the gain table and the fine-tuning examples."""

import json

from experiments import rejection_sampling
from research import config as config_lib
from research.train.loop import train
from tests.train.conftest import tiny_overrides
from tests.train.test_loop import ONE_DEVICE
from tests.train.test_reward_model import TINY


def test_samples_are_scored_and_the_best_written_as_conversations(tmp_path):
    policy, reward = tmp_path / "policy", tmp_path / "reward"
    train(config_lib.load("configs/llama2.py:tiny", tiny_overrides(train__steps=2, model__vocab_size=265,
                                                                   optimizer__warmup_steps=0)),
          str(policy), devices=ONE_DEVICE)
    rm_fields = {**TINY, "train.steps": 2, "data.preferences.count": 8, "evals.preferences.batches": 1}
    train(config_lib.load("configs/rlhf.py:tiny_rm", [f"{k}={v}" for k, v in rm_fields.items()]), str(reward),
          devices=ONE_DEVICE)
    output = tmp_path / "rs"
    text = rejection_sampling.main(["--policy", str(policy), "--reward", str(reward), "--k", "4", "--prompts", "3",
                                    "--max-new-tokens", "6", "--output", str(output)])
    assert "| 1 |" in text and "| 4 |" in text and "Verdict:" in text
    for line in output.with_suffix(".jsonl").read_text().splitlines():
        assert [m["role"] for m in json.loads(line)["messages"]] == ["user", "assistant"]
