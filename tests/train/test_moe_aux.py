"""research/train/moe_aux.py: the auxiliary loss and metrics from sown MoE statistics."""

import jax.numpy as jnp
import ml_collections
import numpy as np

from research.train.moe_aux import METRICS, auxiliary_loss, layer_statistics, moe_metrics


def sown(load_balancing, z, loads):
    """Statistics as scanned layers sow them: one tuple entry stacked over the layers."""
    loads = jnp.asarray(loads, jnp.float32)
    return {"layers": {"moe": {
        "load_balancing_loss": (jnp.asarray(load_balancing, jnp.float32),),
        "router_z_loss": (jnp.asarray(z, jnp.float32),),
        "expert_load": (loads,),
        "load_cv": (jnp.std(loads, axis=-1) / jnp.mean(loads, axis=-1),),
        "router_entropy": (jnp.zeros(len(loads)),),
        "dropped_fraction": (jnp.zeros(len(loads)),),
    }}}


def test_auxiliary_loss_sums_the_weighted_losses_over_the_moe_layers():
    statistics = layer_statistics(sown([1.0, 2.0], [3.0, 5.0], [[0.25] * 4, [1.0, 0, 0, 0]]))
    moe = ml_collections.ConfigDict(dict(load_balancing_weight=0.1, z_loss_weight=0.01))
    np.testing.assert_allclose(auxiliary_loss(statistics, moe), 0.1 * 3.0 + 0.01 * 8.0, rtol=1e-6)


def test_metrics_are_layer_means_and_max_load_is_relative_to_uniform():
    metrics = moe_metrics(layer_statistics(sown([1.0, 2.0], [3.0, 5.0], [[0.25] * 4, [1.0, 0, 0, 0]])))
    assert set(metrics) == set(METRICS)
    np.testing.assert_allclose(metrics["moe_load_balancing_loss"], 1.5)
    np.testing.assert_allclose(metrics["moe_max_load"], (1.0 + 4.0) / 2)  # balanced layer 1, collapsed layer 4


def test_unrolled_layers_are_stacked_like_scanned_ones():
    one = sown([1.0], [3.0], [[0.5, 0.5]])["layers"]["moe"]
    unrolled = {"layers_0": {"moe": {k: (v[0][0],) for k, v in one.items()}},
                "layers_1": {"moe": {k: (v[0][0],) for k, v in one.items()}}}
    statistics = layer_statistics(unrolled)
    assert statistics["expert_load"].shape == (2, 2) and statistics["router_z_loss"].shape == (2,)


def test_a_dense_model_has_no_auxiliary_terms():
    assert layer_statistics({}) == {} and moe_metrics({}) == {}
    assert float(auxiliary_loss({}, None)) == 0.0
