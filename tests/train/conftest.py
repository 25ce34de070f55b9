"""A minute LLaMA experiment for loop tests: byte tokenizer, 2 layers, dim 32, 32 tokens."""

import pytest

from research import config as config_lib

TINY_OVERRIDES = {
    "model.dim": 32, "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2,
    "model.hidden_dim": 64, "model.vocab_size": 260, "data.tokenizer": "byte",
    "train.seq_len": 32, "train.batch_size": 8, "train.steps": 8, "train.log_every": 1,
    "train.eval_every": 4, "train.eval_batches": 2, "train.checkpoint_every": 4,
    "evals.samples.max_new_tokens": 4, "evals.samples.prompts": "()",
    "optimizer.warmup_steps": 2, "optimizer.learning_rate": 1e-2,
}


def tiny_overrides(**extra) -> list[str]:
    """`key=value` strings of TINY_OVERRIDES updated with `extra` (dots as `__`)."""
    merged = {**TINY_OVERRIDES, **{k.replace("__", "."): v for k, v in extra.items()}}
    return [f"{k}={v}" for k, v in merged.items()]


@pytest.fixture
def tiny_config():
    def make(**extra):
        return config_lib.load("configs/llama2.py:tiny", tiny_overrides(**extra))
    return make
