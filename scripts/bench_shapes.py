"""The LLaMA shapes the speed goals are stated for (issue: the spine's speed section)."""

from research import config as config_lib

# name: overrides of configs/llama2.py:tiny
SHAPES = {
    "tiny (d256 L4 h4 kv2)": ["model.dim=256", "model.num_layers=4", "model.num_heads=4", "model.num_kv_heads=2",
                              "model.hidden_dim=688", "model.vocab_size=4096"],
    "small (d512 L8 h8 kv4)": ["model.dim=512", "model.num_layers=8", "model.num_heads=8", "model.num_kv_heads=4",
                               "model.hidden_dim=1376", "model.vocab_size=8192"],
}

# PyTorch 2.13 CPU + transformers on this 2-core machine, same shapes (from the issue).
PYTORCH_TRAIN_TOKENS_PER_S = {"tiny (d256 L4 h4 kv2)": 3431, "small (d512 L8 h8 kv4)": 658}
PYTORCH_DECODE_TOKENS_PER_S = {("tiny (d256 L4 h4 kv2)", 1): 230, ("small (d512 L8 h8 kv4)", 1): 57,
                               ("tiny (d256 L4 h4 kv2)", 8): 1183, ("small (d512 L8 h8 kv4)", 8): 290}


def shape_config(name: str, extra=()):
    return config_lib.load("configs/llama2.py:tiny", SHAPES[name] + list(extra))
