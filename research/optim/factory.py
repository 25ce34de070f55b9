"""The optimizer of a run, built from `config.optimizer`.

    tx = make_optimizer(config.optimizer, total_steps=config.train.steps)
    learning_rate = make_schedule(config.optimizer, config.train.steps)  # for logging

The transformation is clip_by_global_norm(c) (when `grad_clip_norm` is set) followed by
`adam` or `adamw` with the learning-rate schedule of `make_schedule`. The optimizer state
does not store η: `make_schedule` is a pure function of the config, so a trainer that calls
it with the update count t (0 for the first update) gets exactly the η_t the update used.
"""

import jax
import ml_collections
import optax

from research.optim.adam import adam, adamw
from research.optim.schedules import make_schedule

OPTIMIZERS = {"adam": adam, "adamw": adamw}
DECAY_MASKS = ("all", "matrices")
NOT_DECAYED_NAMES = ("embed", "norm", "bias")


def make_optimizer(opt_config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Clipping, then Adam(+L2) or AdamW per `opt_config.name`, with its schedule and decay mask.

    Fields: name, learning_rate, b1, b2, eps, weight_decay, decay_mask ("all" or "matrices",
    see `decays_matrices`), grad_clip_norm (None or 0 = no clipping), schedule, warmup_steps,
    final_lr_fraction, mu_dtype (None or a dtype name). Unknown values raise ValueError.
    """
    if opt_config.name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name {opt_config.name!r} is unknown; known optimizers: {sorted(OPTIMIZERS)}")
    if opt_config.decay_mask not in DECAY_MASKS:
        raise ValueError(f"optimizer.decay_mask {opt_config.decay_mask!r} is unknown; known masks: {list(DECAY_MASKS)}")
    clip_norm = opt_config.grad_clip_norm
    if clip_norm is not None and clip_norm < 0:
        raise ValueError(f"optimizer.grad_clip_norm must be None or >= 0, got {clip_norm}")
    optimizer = OPTIMIZERS[opt_config.name](
        make_schedule(opt_config, total_steps), opt_config.b1, opt_config.b2, opt_config.eps,
        opt_config.weight_decay, mask=decays_matrices if opt_config.decay_mask == "matrices" else None,
        mu_dtype=opt_config.mu_dtype)
    if not clip_norm:
        return optimizer
    return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


def decays_matrices(params):
    """True for the weight matrices: leaves with ndim ≥ 2 whose path names no embedding,
    norm or bias. Names are checked too, not only ndim, because layers stacked by `nn.scan`
    give norm scales and biases a leading layer axis ([layers, dim])."""
    def is_decayed(path, leaf):
        name = jax.tree_util.keystr(path).lower()
        return leaf.ndim >= 2 and not any(word in name for word in NOT_DECAYED_NAMES)

    return jax.tree_util.tree_map_with_path(is_decayed, params)
