"""The grouped matmul compiles through Mosaic for TPU v5e and v5p and lowers through Triton for a GPU, on this
CPU host, and its declared cost reaches XLA's cost analysis.

Mosaic: `jax.experimental.topologies` describes a one-chip slice through libtpu, and abstract arguments placed
on its device make `jit(...).lower(...).compile()` run the real TPU compiler (as in
test_attention_tpu_lowering.py). Forward and backward are three kernels (gmm, gmm with rhs transposed, tgmm),
each one `tpu_custom_call`; each declares 2·m·k·n FLOPs, so the compiled program counts 3 × 2·m·k·n.
Shapes: 1024 rows, k 768, n 384 (k in 512-column tiles would need padding, so the tile shrinks to 384),
8 experts, bfloat16.
"""
import importlib.util

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding

from pallas_kernels.compile_target import lowering_for
from pallas_kernels.grouped_matmul import grouped_matmul

ROWS, K, N, EXPERTS = 1024, 768, 384, 8
ONE_CHIP = {"v5e": "v5e:1x1", "v5p": "v5p:1x1x1"}
MOSAIC_KERNEL = 'custom_call_target="tpu_custom_call"'
pytestmark = pytest.mark.usefixtures("without_persistent_cache")


def tpu_chip(chip):
    """The device of a one-chip `chip` slice; fails (never skips) with an install hint without libtpu."""
    if importlib.util.find_spec("libtpu") is None:
        pytest.fail(f"libtpu is not installed; install it with pip install 'jax[tpu]=={jax.__version__}'")
    topology = topologies.get_topology_desc(platform="tpu", topology_name=ONE_CHIP[chip], chip_config_name="default",
                                            chips_per_host_bounds=(1, 1, 1), num_slices=1)
    return topology.devices[0]


def operands(sharding=None):
    return (jax.ShapeDtypeStruct((ROWS, K), jnp.bfloat16, sharding=sharding),
            jax.ShapeDtypeStruct((EXPERTS, K, N), jnp.bfloat16, sharding=sharding),
            jax.ShapeDtypeStruct((EXPERTS,), jnp.int32, sharding=sharding))


def value_and_gradients(lhs, rhs, group_sizes):
    def loss(lhs, rhs):
        return grouped_matmul(lhs, rhs, group_sizes, interpret=False).sum(dtype=jnp.float32)
    return jax.value_and_grad(loss, argnums=(0, 1))(lhs, rhs)


@pytest.mark.parametrize("chip", ["v5e", "v5p"])
def test_forward_and_backward_compile_with_mosaic_and_declare_their_flops(chip):
    compiled = jax.jit(value_and_gradients).lower(*operands(SingleDeviceSharding(tpu_chip(chip)))).compile()
    assert compiled.as_text().count(MOSAIC_KERNEL) == 3
    matmul_flops = 2 * ROWS * K * N
    assert 3 * matmul_flops <= compiled.cost_analysis()["flops"] <= 3.05 * matmul_flops


def test_forward_and_backward_lower_through_triton_for_a_gpu():
    """Inside `lowering_for("gpu")` the kernels are Triton programs (lowered on this CPU host, nothing runs).
    A function of its own: jit's trace cache would hand back the Mosaic test's trace of `value_and_gradients`."""
    with lowering_for("gpu"):
        text = jax.jit(lambda *args: value_and_gradients(*args)).trace(*operands()).lower(
            lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 3
    assert "grouped_matmul_tgmm" in text
