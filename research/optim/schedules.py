"""Learning-rate schedules η(t) from `config.optimizer`, t = the update count from 0.

With peak η = `learning_rate`, W = `warmup_steps`, T = `total_steps` and
η_min = `final_lr_fraction`·η:

    constant:       η(t) = η
    warmup_cosine:  η(t) = η·t/W                                     for t < W
                    η(t) = η_min + (η − η_min)·½(1 + cos(π·p(t)))     for t ≥ W
    warmup_linear:  η(t) = η·t/W                                     for t < W
                    η(t) = η_min + (η − η_min)·(1 − p(t))             for t ≥ W

where p(t) = min((t − W)/(T − W), 1) is the progress of the decay, so η(W) = η and
η(t) = η_min from t = T on. LLaMA-2 pretraining uses warmup_cosine with W = 2000 and
η_min = 0.1·η. As in optax, the first update (t = 0) of a warmup uses η(0) = 0.
"""

import functools

import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("constant", "warmup_cosine", "warmup_linear")


def make_schedule(opt_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The schedule named by `opt_config.schedule` (formulas in the module docstring).

    Reads `learning_rate`, `schedule`, and for the warmup kinds `warmup_steps` and
    `final_lr_fraction`. Raises ValueError naming the field that is out of range.
    """
    kind, peak = opt_config.schedule, opt_config.learning_rate
    if kind not in SCHEDULES:
        raise ValueError(f"optimizer.schedule {kind!r} is unknown; known schedules: {list(SCHEDULES)}")
    if peak < 0:
        raise ValueError(f"optimizer.learning_rate must be >= 0, got {peak}")
    if kind == "constant":
        return optax.constant_schedule(peak)
    warmup_steps, final_fraction = opt_config.warmup_steps, opt_config.final_lr_fraction
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"optimizer.warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0 <= final_fraction <= 1:
        raise ValueError(f"optimizer.final_lr_fraction must be in [0, 1], got {final_fraction}")
    decay_shape = cosine_decay_shape if kind == "warmup_cosine" else linear_decay_shape
    return functools.partial(
        warmup_then_decay, peak=peak, final=final_fraction * peak, warmup_steps=warmup_steps,
        total_steps=total_steps, decay_shape=decay_shape)


def warmup_then_decay(step, *, peak, final, warmup_steps, total_steps, decay_shape):
    """η·t/W before W, then η_min + (η − η_min)·decay_shape(p(t)) (module docstring)."""
    step = jnp.asarray(step, jnp.float32)
    warmup = peak * step / max(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    decay = final + (peak - final) * decay_shape(progress)
    return jnp.where(step < warmup_steps, warmup, decay)


def cosine_decay_shape(progress):
    """½(1 + cos(π·p)): 1 at p = 0, 0 at p = 1."""
    return 0.5 * (1 + jnp.cos(jnp.pi * progress))


def linear_decay_shape(progress):
    """1 − p."""
    return 1 - progress
