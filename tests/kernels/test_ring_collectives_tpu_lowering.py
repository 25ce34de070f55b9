"""The Pallas ring kernels compile through Mosaic for an 8-chip TPU v5p slice (v5p:2x2x2), on this CPU host.

The slice comes from `jax.experimental.topologies.get_topology_desc` (libtpu); the kernels run under
`jax.shard_map` over its 8 chips with `interpret=False`, so the real TPU compiler lowers the remote
DMAs and semaphores. Every kernel call becomes one `tpu_custom_call` in the compiled program.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels import ring_collectives as ring

MOSAIC_KERNEL = 'custom_call_target="tpu_custom_call"'
pytestmark = pytest.mark.usefixtures("without_persistent_cache")


def v5p_eight_chips() -> Mesh:
    if importlib.util.find_spec("libtpu") is None:
        pytest.fail(f"libtpu is not installed; install it with pip install 'jax[tpu]=={jax.__version__}'")
    topology = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x2", chip_config_name="default",
                                            chips_per_host_bounds=(2, 2, 1), num_slices=1)
    return Mesh(np.array(topology.devices), ("x",))


@pytest.mark.parametrize("collective, shape, dtype", [
    (lambda x: ring.ring_all_reduce(x, "x", interpret=False), (1000, 999), jnp.float32),
    (lambda x: ring.ring_all_reduce(x, "x", bidirectional=True, interpret=False), (1000, 999), jnp.bfloat16),
    (lambda x: ring.ring_reduce_scatter(x, "x", tiled=True, bidirectional=True, interpret=False), (512, 1024),
     jnp.float32),
    (lambda x: ring.ring_all_gather(x, "x", interpret=False), (64, 1024), jnp.int32),
])
def test_ring_kernels_compile_with_mosaic_for_eight_v5p_chips(collective, shape, dtype):
    mesh = v5p_eight_chips()
    program = jax.jit(jax.shard_map(lambda x: collective(x[0])[None], mesh=mesh, in_specs=P("x"),
                                    out_specs=P("x"), check_vma=False))
    argument = jax.ShapeDtypeStruct((8, *shape), dtype, sharding=NamedSharding(mesh, P("x")))
    assert program.lower(argument).compile().as_text().count(MOSAIC_KERNEL) >= 1
