"""The LLaMA shapes the speed goals are stated for (issue 23), as overrides of configs/llama2.py:tiny."""

from research import config as config_lib

SHAPES = {
    "tiny (d256 L4 h4 kv2)": ["model.dim=256", "model.num_layers=4", "model.num_heads=4", "model.num_kv_heads=2",
                              "model.hidden_dim=688", "model.vocab_size=4096"],
    "small (d512 L8 h8 kv4)": ["model.dim=512", "model.num_layers=8", "model.num_heads=8", "model.num_kv_heads=4",
                               "model.hidden_dim=1376", "model.vocab_size=8192"],
}


def shape_config(name: str, extra=()):
    """configs/llama2.py:tiny with the shape `name`, then the overrides `extra` (e.g. a toy shape for tests)."""
    if name not in SHAPES:
        raise ValueError(f"shape {name!r} is not one of {sorted(SHAPES)}")
    return config_lib.load("configs/llama2.py:tiny", SHAPES[name] + list(extra))
