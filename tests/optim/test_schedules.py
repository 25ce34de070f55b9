"""research/optim/schedules.py: warmup, cosine and linear decay, agreement with optax, bad input."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research.optim import make_schedule

PEAK, WARMUP, TOTAL, FRACTION = 3e-4, 20, 100, 0.1
STEPS = jnp.arange(TOTAL + 30)


def opt_config(**overrides):
    fields = dict(learning_rate=PEAK, schedule="warmup_cosine", warmup_steps=WARMUP, final_lr_fraction=FRACTION)
    return ml_collections.ConfigDict({**fields, **overrides})


def values(schedule):
    return np.asarray(jax.jit(schedule)(STEPS))


def test_warmup_cosine_rises_from_zero_to_peak_then_falls_to_the_final_fraction():
    lr = values(make_schedule(opt_config(), TOTAL))
    np.testing.assert_allclose(lr[[0, WARMUP // 2, WARMUP]], [0.0, PEAK / 2, PEAK], rtol=1e-6)
    middle = (WARMUP + TOTAL) // 2
    np.testing.assert_allclose(lr[middle], (PEAK + FRACTION * PEAK) / 2, rtol=1e-5)
    np.testing.assert_allclose(lr[TOTAL:], FRACTION * PEAK, rtol=1e-6)
    assert np.all(np.diff(lr[:WARMUP + 1]) > 0) and np.all(np.diff(lr[WARMUP:]) <= 0)


def test_warmup_cosine_agrees_with_optax():
    expected = optax.warmup_cosine_decay_schedule(0.0, PEAK, WARMUP, TOTAL, end_value=FRACTION * PEAK)
    np.testing.assert_allclose(values(make_schedule(opt_config(), TOTAL)), values(expected), rtol=1e-5, atol=1e-12)


def test_warmup_linear_agrees_with_optax():
    expected = optax.join_schedules(
        [optax.linear_schedule(0.0, PEAK, WARMUP), optax.linear_schedule(PEAK, FRACTION * PEAK, TOTAL - WARMUP)],
        [WARMUP])
    lr = values(make_schedule(opt_config(schedule="warmup_linear"), TOTAL))
    np.testing.assert_allclose(lr, values(expected), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(np.diff(lr[WARMUP:TOTAL + 1]), -(1 - FRACTION) * PEAK / (TOTAL - WARMUP), rtol=1e-3)


def test_constant_is_the_peak_at_every_step():
    np.testing.assert_allclose(values(make_schedule(opt_config(schedule="constant"), TOTAL)), PEAK)


def test_no_warmup_starts_at_the_peak():
    lr = values(make_schedule(opt_config(warmup_steps=0), TOTAL))
    np.testing.assert_allclose(lr[0], PEAK, rtol=1e-6)
    np.testing.assert_allclose(lr[TOTAL], FRACTION * PEAK, rtol=1e-6)


@pytest.mark.parametrize("overrides, total_steps, message", [
    (dict(schedule="cosine"), TOTAL, "constant.*warmup_cosine.*warmup_linear"),
    (dict(learning_rate=-1e-3), TOTAL, "learning_rate"),
    (dict(warmup_steps=TOTAL + 1), TOTAL, "warmup_steps"),
    (dict(warmup_steps=-1), TOTAL, "warmup_steps"),
    (dict(final_lr_fraction=1.5), TOTAL, "final_lr_fraction"),
    ({}, 0, "total_steps"),
])
def test_bad_settings_raise_value_errors_naming_them(overrides, total_steps, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(opt_config(**overrides), total_steps)
