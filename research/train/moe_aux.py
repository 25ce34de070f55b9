"""The mixture-of-experts terms of a training step, from what the MoE layers sow (research/models/moe.py).

Every MoE layer ℓ sows its unweighted statistics; the objective adds, summed over the MoE layers
as the Switch Transformer and ST-MoE do,

    aux = α · Σ_ℓ load_balancing_loss_ℓ + β · Σ_ℓ router_z_loss_ℓ,

α = `moe.load_balancing_weight`, β = `moe.z_loss_weight`. The logged metrics are the means over
the MoE layers (`max_load` is max_i f_i · E: 1 when balanced, E when one expert takes everything).
"""

import jax
import jax.numpy as jnp

SCALAR_STATISTICS = ("load_balancing_loss", "router_z_loss", "load_cv", "router_entropy", "dropped_fraction")
METRICS = (*(f"moe_{name}" for name in SCALAR_STATISTICS), "moe_max_load")


def layer_statistics(collection) -> dict:
    """{name: [num_moe_layers, ...]} from a model's sown MoE collection (scanned layers sow stacked
    values, unrolled layers one tuple each); {} for a dense model."""
    per_name = {}
    for path, value in jax.tree_util.tree_flatten_with_path(collection)[0]:
        name = next(key.key for key in reversed(path) if isinstance(key, jax.tree_util.DictKey))
        per_name.setdefault(name, []).append(value.reshape(-1, *value.shape[value.ndim - _rank(name):]))
    return {name: jnp.concatenate(values) for name, values in per_name.items()}


def _rank(name: str) -> int:
    """Rank of one layer's statistic: the per-expert load is a vector, the others scalars."""
    return 1 if name == "expert_load" else 0


def auxiliary_loss(statistics: dict, moe) -> jax.Array:
    """α Σ_ℓ load_balancing_loss_ℓ + β Σ_ℓ router_z_loss_ℓ; 0 without MoE layers."""
    if not statistics:
        return jnp.zeros((), jnp.float32)
    return (moe.load_balancing_weight * jnp.sum(statistics["load_balancing_loss"])
            + moe.z_loss_weight * jnp.sum(statistics["router_z_loss"]))


def moe_metrics(statistics: dict) -> dict:
    """The scalar METRICS: each statistic's mean over the MoE layers, and `moe_max_load`; {} without
    MoE layers."""
    if not statistics:
        return {}
    metrics = {f"moe_{name}": jnp.mean(statistics[name]) for name in SCALAR_STATISTICS}
    load = statistics["expert_load"]
    metrics["moe_max_load"] = jnp.mean(jnp.max(load, axis=-1) * load.shape[-1])
    return metrics
