"""research/parallel/mesh.py: mesh shapes, -1 resolution, logical-to-mesh mapping."""

import jax
import ml_collections
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research.parallel.mesh import LOGICAL_AXIS_RULES, logical_to_sharding, make_mesh, mesh_shape


def mesh_config(**sizes):
    return ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1, "expert": 1, **sizes})


def test_minus_one_takes_the_remaining_devices():
    assert mesh_shape(mesh_config(data=-1, tensor=2), 8) == (4, 1, 2, 1)
    assert mesh_shape(mesh_config(fsdp=-1), 8) == (1, 8, 1, 1)


@pytest.mark.parametrize("sizes, devices, message", [
    (dict(data=3), 8, "needs 3 devices"),
    (dict(data=-1, tensor=3), 8, "not divisible"),
])
def test_impossible_meshes_are_rejected(sizes, devices, message):
    with pytest.raises(ValueError, match=message):
        mesh_shape(mesh_config(**sizes), devices)


def test_mesh_over_eight_fake_devices_has_the_four_axes():
    mesh = make_mesh(mesh_config(data=2, fsdp=2, tensor=2))
    assert mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2, "expert": 1}
    assert len(make_mesh(mesh_config(), jax.devices()[:1]).devices.flat) == 1


def test_logical_axes_map_fsdp_and_megatron_style():
    mesh = make_mesh(mesh_config(data=2, fsdp=2, tensor=2))
    specs = {"q": P("layers", "embed", "heads", "head_dim"), "down": P("layers", "mlp", "embed"),
             "embed": P("vocab", "embed"), "batch": P("batch", "seq")}
    shardings = logical_to_sharding(specs, mesh)
    assert shardings["q"].spec == P(None, "fsdp", "tensor", None)
    assert shardings["down"].spec == P(None, "tensor", "fsdp")
    assert shardings["embed"].spec == P("tensor", "fsdp")
    assert shardings["batch"].spec == P(("data", "fsdp", "expert"), None)
    assert {name for name, _ in LOGICAL_AXIS_RULES} >= {"embed", "mlp", "heads", "kv_heads", "vocab", "expert"}


def test_constrain_pins_the_dimensions_its_axes_divide_and_nothing_without_a_mesh():
    import jax.numpy as jnp

    from research.parallel.mesh import constrain

    mesh = make_mesh(mesh_config(data=2, fsdp=2, tensor=2), jax.devices()[:8])
    pinned = jax.jit(lambda x: constrain(x, ("batch", "seq", "heads", None), mesh))(jnp.zeros((8, 6, 4, 3)))
    assert pinned.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp", "expert"), None, "tensor")), 4)
    one_row = jax.jit(lambda x: constrain(x, ("batch", "seq", None), mesh))(jnp.zeros((1, 6, 3)))
    assert one_row.sharding.is_equivalent_to(NamedSharding(mesh, P()), 3)  # a batch of one is not split
    x = jnp.ones((2, 3))
    assert constrain(x, ("batch", None), None) is x


def test_the_model_keeps_its_activations_batch_sharded_under_pure_fsdp():
    """With every weight's width split over fsdp, the logits still come out split by batch rows,
    not by width: the model pins its activations (research/models/llama.py)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from research import config as config_lib
    from research.models import make_model

    config = config_lib.load("configs/llama2.py:tiny", ["model.dim=32", "model.num_layers=1", "model.num_heads=4",
                                                        "model.num_kv_heads=2", "model.hidden_dim=48",
                                                        "model.vocab_size=300", "data.tokenizer=byte"])
    mesh = make_mesh(mesh_config(data=1, fsdp=8), jax.devices()[:8])
    model = make_model(config.model, mesh)
    tokens = jnp.zeros((8, 16), jnp.int32)
    params = nn.meta.unbox(model.init(jax.random.key(0), tokens)["params"])
    logits = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)
    assert logits.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp", "expert"))), 3)


def test_accumulation_steps_come_from_the_micro_batch_per_batch_shard_or_as_given():
    from research.parallel.mesh import accumulation_steps

    def train(**fields):
        return ml_collections.ConfigDict({"batch_size": 1024, "grad_accum_steps": 1, **fields})

    assert accumulation_steps(train(micro_batch_per_device=1), {"data": 1, "fsdp": 4, "tensor": 2}) == 256
    assert accumulation_steps(train(micro_batch_per_device=2), {"data": 2, "fsdp": 4, "expert": 2}) == 32
    assert accumulation_steps(train(micro_batch_per_device=0, grad_accum_steps=8), {"fsdp": 4}) == 8
    assert accumulation_steps(train(grad_accum_steps=8), {}) == 8  # configs without the field: as before
    with pytest.raises(ValueError, match="train.batch_size and train.micro_batch_per_device: .* 3 sequence"):
        accumulation_steps(train(micro_batch_per_device=3), {"fsdp": 4})


def test_full_size_configs_default_to_fsdp_over_every_chip_and_tiny_ones_keep_data_parallelism():
    from research import config as config_lib

    for spec in ("configs/llama2.py:7b", "configs/llama2.py:70b", "configs/seed_thinking.py:full",
                 "configs/chameleon.py:34b"):
        config = config_lib.load(spec)
        assert (config.mesh.data, config.mesh.fsdp, config.train.micro_batch_per_device) == (1, -1, 1), spec
        assert mesh_shape(config.mesh, 64) == (1, 64, 1, 1)
    tiny = config_lib.load("configs/llama2.py:tiny")
    assert (tiny.mesh.data, tiny.mesh.fsdp, tiny.train.micro_batch_per_device) == (-1, 1, 0)
    with pytest.raises(ValueError, match="train.micro_batch_per_device: .* excludes train.grad_accum_steps 4"):
        config_lib.load("configs/llama2.py:7b", ["train.grad_accum_steps=4"])
    with pytest.raises(ValueError, match="train.micro_batch_per_device: must be >= 0"):
        config_lib.load("configs/llama2.py:7b", ["train.micro_batch_per_device=-1"])
