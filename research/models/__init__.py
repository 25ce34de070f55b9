"""Model families and their parameter counts.

`make_model(config.model)` builds the module of the family `config.model.family` names
(research/models/family.py): a key of `FAMILIES`, or the dotted path of a module defining `FAMILY`.

`count_params(config.model)` counts from shapes alone (`jax.eval_shape`): nothing is
allocated, so it is exact and instant for the full-size configs. A token uses every parameter
except the routed experts it is not sent to: of a parameter with a logical `expert` axis
(E experts stacked), k/E is active (top-k routing); embeddings count in both totals.
"""

import importlib

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import PartitionSpec

from research.models.family import ModelFamily

FAMILIES = {  # family name -> the module that defines its FAMILY
    "llama": "research.models.llama",
    "chameleon": "research.models.chameleon",
    "vq_image_tokenizer": "research.models.vq_image_tokenizer",
    "medusa": "research.models.medusa",
    "value": "research.models.value_model",
}
DEFAULT_FAMILY = "llama"


def family_of(model_config) -> ModelFamily:
    """The `ModelFamily` that `model_config.family` names (default "llama")."""
    name = model_config.get("family", DEFAULT_FAMILY)
    if name not in FAMILIES and "." not in name:
        raise ValueError(f"config field model.family: {name!r} is not one of {sorted(FAMILIES)} "
                         "nor the dotted path of a module that defines FAMILY")
    try:
        module = importlib.import_module(FAMILIES.get(name, name))
    except ModuleNotFoundError as error:
        raise ValueError(f"config field model.family: cannot import {name!r} ({error})") from None
    if not isinstance(getattr(module, "FAMILY", None), ModelFamily):
        raise ValueError(f"config field model.family: module {module.__name__} defines no FAMILY (a ModelFamily)")
    return module.FAMILY


def make_model(model_config, mesh=None):
    """The flax module for `config.model`; `mesh` for layers that shard work by hand (ring
    attention, expert parallelism)."""
    return family_of(model_config).build(model_config, mesh)


def boxed_abstract_params(model_config):
    """Parameter shapes of the model (`jax.ShapeDtypeStruct`s) in their logical-axis boxes."""
    model = make_model(model_config)
    inputs = family_of(model_config).init_inputs(model_config)
    return jax.eval_shape(lambda *x: model.init(jax.random.key(0), *x), *inputs)["params"]


def abstract_params(model_config):
    """Parameter shapes of the model (a pytree of `jax.ShapeDtypeStruct`), boxes removed."""
    return nn.meta.unbox(boxed_abstract_params(model_config))


def count_params(model_config) -> dict[str, int]:
    """{"total": all parameters, "active": parameters used per token} (equal for dense models)."""
    boxed = boxed_abstract_params(model_config)
    sizes = [int(np.prod(s.shape, dtype=np.int64)) for s in jax.tree.leaves(nn.meta.unbox(boxed))]
    routed = [("expert" in (spec or ())) for spec in jax.tree.leaves(
        nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, PartitionSpec))]
    total = sum(sizes)
    expert_total = sum(size for size, is_routed in zip(sizes, routed) if is_routed)
    moe = model_config.get("moe")
    expert_active = 0 if moe is None else expert_total * moe.top_k // moe.num_experts
    return {"total": total, "active": total - expert_total + expert_active}
