"""Adam with L2 against AdamW on a very small LLaMA: the config and grids of experiments/adamw_decoupling.py.

    configs/adamw_decoupling.py:adam    configs/adamw_decoupling.py:optimizer=adamw,steps=40,points=3

A 2-layer, 64-wide LLaMA with a 512-token SentencePiece vocabulary, trained for `steps` steps of
16 x 128 tokens on the CPython docs (about 229k training tokens: 150 steps are 1.3 epochs) and
evaluated on the whole validation split, with Adam's defaults (β1 0.9, β2 0.999, ε 1e-8), no
gradient clipping, linear warmup over 5% of the steps and cosine decay to 10%.

Weight decay as in Loshchilov & Hutter (2019), on the weight matrices (norms and the embedding
are not decayed):
- `adam`: L2 regularisation, g ← g + λθ before the moments, λ = `optimizer.weight_decay` set
  directly (an override replaces the field reference below);
- `adamw`: λ = `optimizer.decay_per_step` of the paper's Algorithm 2,
  θ ← θ − η_t·(α·m̂/(√v̂+ε) + λ·θ), a decay scaled by the schedule multiplier η_t but not by
  the learning rate α. The project's adamw (optax's convention) scales its weight_decay by the
  whole learning rate α·η_t, so `optimizer.weight_decay` is decay_per_step / learning_rate,
  a field reference that follows overrides of either field.

`get_sweep(arg)` is the figure's sweep: the learning-rate x decay grid of each optimizer, the
optimizer chosen by `optimizer.name` (the `optimizer` argument only sets the default of single
runs); `points=K` keeps K values of each axis spread evenly over it (both ends kept), 0 keeps all.
"""

import os

import ml_collections

from research.config import load_module, parse_arg

LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
DECAY_FIELDS = {"adam": "optimizer.weight_decay", "adamw": "optimizer.decay_per_step"}
# Half-decade ladders from harmless to harmful, found with one-column probes at α = 4e-3.
DECAYS = {
    "adam": (0.0, 3e-5, 1e-4, 3e-4, 1e-3),  # L2 factor λ
    "adamw": (0.0, 3e-4, 1e-3, 3e-3, 1e-2),  # decay per step λ at the schedule's peak
}


def arguments(arg: str | None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, optimizer="adamw", steps=150, points=0)
    if args.optimizer not in DECAY_FIELDS:
        raise ValueError(f"optimizer {args.optimizer!r} is not one of {sorted(DECAY_FIELDS)}")
    return args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = arguments(arg)
    config = load_module(os.path.join(os.path.dirname(__file__), "llama2.py")).get_config("tiny")
    config.model.update(dim=64, num_layers=2, num_heads=4, num_kv_heads=2, hidden_dim=176,
                        vocab_size=512, max_seq_len=128)
    config.train.update(steps=args.steps, batch_size=16, seq_len=128, log_every=max(1, args.steps // 30),
                        eval_every=0, eval_batches=0, checkpoint_every=100)
    config.evals.samples.prompts = ()
    config.optimizer.update(name=args.optimizer, learning_rate=4e-3, b1=0.9, b2=0.999, eps=1e-8,
                            grad_clip_norm=0.0, warmup_steps=max(1, args.steps // 20), decay_mask="matrices")
    config.optimizer.decay_per_step = 0.0
    config.optimizer.weight_decay = (config.optimizer.get_ref("decay_per_step")
                                     / config.optimizer.get_ref("learning_rate"))
    return config


def spread(values: tuple, points: int) -> tuple:
    """`points` of `values` at evenly spaced positions, first and last included (all if 0)."""
    if not points or points >= len(values):
        return values
    if points == 1:
        return values[:1]
    return tuple(values[round(i * (len(values) - 1) / (points - 1))] for i in range(points))


def get_sweep(arg: str | None = None) -> list[dict]:
    args = arguments(arg)
    return [{"optimizer.name": optimizer, "optimizer.learning_rate": learning_rate, DECAY_FIELDS[optimizer]: decay}
            for optimizer in DECAY_FIELDS
            for learning_rate in spread(LEARNING_RATES, args.points)
            for decay in spread(DECAYS[optimizer], args.points)]
