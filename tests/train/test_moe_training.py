"""Training a mixture-of-experts model, and context-parallel training, through the shared loop."""

import jax
import numpy as np
import pytest

from research import config as config_lib
from research.train.loop import train
from research.train.metrics import read_metrics
from research.train.moe_aux import METRICS
from tests.train.conftest import tiny_overrides

SHORT = dict(train__steps=4, train__eval_every=0, train__checkpoint_every=0)


def moe_config(**extra):
    overrides = [o for o in tiny_overrides(**{**SHORT, **extra}) if not o.startswith("model.hidden_dim")]
    return config_lib.load("configs/seed_thinking.py:tiny", [*overrides, "model.moe.expert_hidden_dim=32",
                                                              "model.moe.num_experts=4"])


def train_records(workdir):
    return [r for r in read_metrics(workdir) if "loss" in r]


@pytest.mark.parametrize("dispatch", ["dropless", "capacity"])
def test_expert_parallel_training_follows_the_one_device_run(tmp_path, dispatch):
    """expert=2 × data=4 with two micro-batches: the same losses and MoE metrics as on one device
    (capacity_factor 4 keeps every assignment, so both groupings of tokens agree)."""
    extra = dict(model__moe__dispatch=dispatch, model__moe__capacity_factor=4.0, train__grad_accum_steps=2)
    one = train(moe_config(**extra), str(tmp_path / "one"), devices=jax.devices()[:1])
    sharded = train(moe_config(mesh__data=4, mesh__expert=2, **extra), str(tmp_path / "ep"))
    records, sharded_records = train_records(str(tmp_path / "one")), train_records(str(tmp_path / "ep"))
    assert records[-1]["loss"] < records[0]["loss"]
    for name in ("loss", *METRICS):
        np.testing.assert_allclose([r[name] for r in sharded_records], [r[name] for r in records], rtol=2e-4,
                                   atol=1e-6, err_msg=name)
    assert records[0]["moe_dropped_fraction"] == 0.0
    assert 1.0 <= records[0]["moe_max_load"] <= 4.0
    np.testing.assert_allclose(sharded["eval_loss"], one["eval_loss"], rtol=2e-4)
    assert {f"eval_{name}" for name in METRICS} <= set(one)


def test_the_balancing_loss_steers_the_router(tmp_path):
    """With a large balancing weight the router's load-balancing loss falls towards 1 (uniform)."""
    balanced = train(moe_config(model__moe__load_balancing_weight=1.0, optimizer__learning_rate=3e-2,
                                train__steps=8), str(tmp_path / "balanced"), devices=jax.devices()[:1])
    free = train(moe_config(model__moe__load_balancing_weight=0.0, optimizer__learning_rate=3e-2,
                            train__steps=8), str(tmp_path / "free"), devices=jax.devices()[:1])
    assert balanced["eval_moe_load_balancing_loss"] < free["eval_moe_load_balancing_loss"]


def test_ring_attention_training_follows_the_xla_loss_curve(tiny_config, tmp_path):
    xla = train(tiny_config(**SHORT), str(tmp_path / "xla"), devices=jax.devices()[:1])
    ring = train(tiny_config(model__attention_impl="ring", mesh__data=4, mesh__context=2, **SHORT),
                 str(tmp_path / "ring"))
    np.testing.assert_allclose([r["loss"] for r in train_records(str(tmp_path / "ring"))],
                               [r["loss"] for r in train_records(str(tmp_path / "xla"))], rtol=2e-4)
    np.testing.assert_allclose(ring["eval_loss"], xla["eval_loss"], rtol=2e-4)
