"""research/train/step_metrics.py: metrics fetched late, non-finite losses named, tokens/s and MFU."""

import jax.numpy as jnp
import pytest

from research.train import step_metrics
from research.train.step_metrics import PendingMetrics, Throughput


def test_throughput_leaves_evaluation_and_checkpoint_time_out(monkeypatch):
    throughput = Throughput(flops_per_token=2.0, peak_flops=100.0)
    monkeypatch.setattr(step_metrics.time, "perf_counter", lambda: 0.0)
    throughput.begin()
    throughput.exclude(4.0)  # of the 10 s until the reading, 4 went to evaluation
    monkeypatch.setattr(step_metrics.time, "perf_counter", lambda: 10.0)
    rates = throughput.read(tokens=300, steps=3)
    assert rates["tokens_per_s"] == 300 / 6.0 and rates["mfu"] == 300 / 6.0 * 2.0 / 100.0
    assert rates["step_time_s"] == 2.0


def test_pending_metrics_count_the_timed_steps_and_report_the_newest():
    pending = PendingMetrics(tokens_per_step=None)
    for step, tokens in ((1, 5), (2, 7), (3, 9)):
        pending.add(step, {"loss": jnp.float32(step), "tokens": jnp.int32(tokens)}, timed=step > 1)
    pending.fetch(last_saved=0, checkpoint_dir="ck")
    newest, tokens, steps = pending.take()
    assert float(newest["loss"]) == 3.0 and tokens == 16 and steps == 2
    assert pending.fetched == []


def test_the_first_non_finite_loss_is_named_with_what_is_kept():
    pending = PendingMetrics(tokens_per_step=8)
    for step, loss in ((4, 1.0), (5, float("nan")), (6, float("inf"))):
        pending.add(step, {"loss": jnp.float32(loss)})
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 5; stopping. The last good checkpoint "
                                                 r"\(step 3\) is kept in ck"):
        pending.fetch(last_saved=3, checkpoint_dir="ck")
