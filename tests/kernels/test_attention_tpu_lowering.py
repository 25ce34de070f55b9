"""The attention kernels compile through Mosaic for TPU v5e and v5p (not the interpreter), on this CPU host.

`jax.experimental.topologies.get_topology_desc` describes a one-chip slice through libtpu; abstract
arguments placed on its device make `jit(...).lower(...).compile()` run the real TPU compiler, also
with JAX_PLATFORMS=cpu (tests/conftest.py). Shapes: bfloat16; every common head_dim (64, 96, 128, 256)
at seq 256, and head_dim 128 at seq 4096 and longer. Each Pallas kernel becomes one `tpu_custom_call`
(a Mosaic kernel) in the compiled program, so counting them shows that every kernel was lowered by
Mosaic and none fell back to interpret mode.
"""
import importlib.util

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from jax.experimental import topologies
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels.compile_target import lowering_for
from pallas_kernels.decode_attention import decode_attention
from pallas_kernels.flash_attention import (
    MOSAIC_VMEM_HEADROOM,
    flash_attention,
    flash_attention_backward,
    flash_attention_with_lse,
    mosaic_vmem_bytes,
)
from research.models.layers import attention
from research.parallel.mesh import make_mesh

SEQ, HEAD_DIM = 4096, 128
SHORT_SEQ, HEAD_DIMS = 256, (64, 96, 128, 256)
ONE_CHIP = {"v5e": "v5e:1x1", "v5p": "v5p:1x1x1"}
MOSAIC_KERNEL = 'custom_call_target="tpu_custom_call"'
pytestmark = pytest.mark.usefixtures("without_persistent_cache")


def tpu_chip(chip):
    """The device of a one-chip `chip` slice; fails (never skips) with an install hint without libtpu."""
    if importlib.util.find_spec("libtpu") is None:
        pytest.fail(f"libtpu is not installed, so nothing can be compiled for TPU; install it with "
                    f"pip install 'jax[tpu]=={jax.__version__}' (the project's [tpu] extra)")
    topology = topologies.get_topology_desc(platform="tpu", topology_name=ONE_CHIP[chip], chip_config_name="default",
                                            chips_per_host_bounds=(1, 1, 1), num_slices=1)
    return topology.devices[0]


def on_chip(chip, *shapes_and_dtypes):
    sharding = SingleDeviceSharding(tpu_chip(chip))
    return [jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for shape, dtype in shapes_and_dtypes]


def mosaic_kernel_lines(fn, *args):
    """Compiles fn for the args' TPU device; returns the lines of the program that call a Mosaic kernel."""
    return [line for line in jax.jit(fn).lower(*args).compile().as_text().splitlines() if MOSAIC_KERNEL in line]


def mosaic_kernels(fn, *args):
    """The number of Mosaic kernels in fn's program compiled for the args' TPU device."""
    return len(mosaic_kernel_lines(fn, *args))


@pytest.mark.parametrize("chip", ["v5e", "v5p"])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_flash_attention_forward_and_backward_compile_with_mosaic(chip, head_dim):
    """Causal, packed (segment ids), 4 query heads over 2 K/V heads: forward, dQ and dK/dV kernels, on
    [b, heads, s, d] when head_dim is not a multiple of 128 and on [b, s, heads·d] when it is."""
    q, kv, ids = on_chip(chip, ((1, SHORT_SEQ, 4, head_dim), jnp.bfloat16),
                         ((1, SHORT_SEQ, 2, head_dim), jnp.bfloat16), ((1, SHORT_SEQ), jnp.int32))

    def gradients(q, k, v, ids):
        def loss(*qkv):
            return flash_attention(*qkv, causal=True, segment_ids=ids, interpret=False).sum(dtype=jnp.float32)
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    kernels = mosaic_kernel_lines(gradients, q, kv, kv, ids)
    layout = f"[1,4,{SHORT_SEQ},{head_dim}]" if head_dim % 128 else f"[1,{SHORT_SEQ},{4 * head_dim}]"
    assert len(kernels) == 3
    assert all(layout in line for line in kernels)


@pytest.mark.parametrize("chip, seq", [("v5e", 16384), ("v5p", 16384), ("v5e", 65536)])
def test_long_sequences_compile_with_a_raised_vmem_limit(chip, seq):
    """One head's whole K/V (and Q/dO) sequence sits in VMEM: past Mosaic's default 16 MiB scoped limit
    (seq 16384 at head_dim 128) the kernels ask for what their blocks need, within the chip's VMEM."""
    q, kv = on_chip(chip, ((1, seq, 2, HEAD_DIM), jnp.bfloat16), ((1, seq, 1, HEAD_DIM), jnp.bfloat16))

    def gradients(q, k, v):
        def loss(*qkv):
            return flash_attention(*qkv, causal=True, interpret=False).sum(dtype=jnp.float32)
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    assert mosaic_kernels(gradients, q, kv, kv) == 3


def test_vmem_estimate_pads_blocks_to_tiles_and_double_buffers_them():
    """A bf16 [1, 100, 128] block pads to 112 rows (16-row bf16 tiles), an f32 [1, 128, 1] one to 128 lanes."""
    blocks = [((None, 100, 128), jnp.bfloat16), ((None, 128, 1), jnp.float32)]
    buffers = 2 * (112 * 128 * 2 + 128 * 128 * 4)
    working = 4 * (4 * 128 * 64 + 2 * 128 * 128)
    want = buffers + working + MOSAIC_VMEM_HEADROOM
    assert mosaic_vmem_bytes(blocks, block_q=128, block_k=64, head_dim=128) == -(-want // 2**20) * 2**20


def test_flash_blocks_of_ring_attention_compile_with_mosaic():
    """The ring's per-hop work (on v5p, the chip of long-context pods): queries over a key block half
    as long, with the log-sum-exp, and the block's backward from the final output."""
    q, kv, lse = on_chip("v5p", ((1, SEQ, 4, HEAD_DIM), jnp.bfloat16), ((1, SEQ // 2, 2, HEAD_DIM), jnp.bfloat16),
                         ((1, SEQ, 4), jnp.float32))

    def block(q, k, v, lse):
        out, block_lse = flash_attention_with_lse(q, k, v, interpret=False)
        grads = flash_attention_backward(q, k, v, out, lse, out, interpret=False)
        return block_lse, grads

    assert mosaic_kernels(block, q, kv, kv, lse) == 3


@pytest.mark.parametrize("chip", ["v5e", "v5p"])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_decode_attention_compiles_with_mosaic(chip, head_dim):
    """One new token per row, 8 query heads over 4 K/V heads, against a 256-entry cache read in place;
    a program reads 2 K/V heads at head_dim 64, all 4 at 96, one at 128 and 256."""
    q, cache, lengths = on_chip(chip, ((4, 1, 8, head_dim), jnp.bfloat16),
                                ((4, SHORT_SEQ, 4, head_dim), jnp.bfloat16), ((4,), jnp.int32))

    def decode(q, k, v, lengths):
        return decode_attention(q, k, v, lengths, interpret=False)

    [kernel] = mosaic_kernel_lines(decode, q, cache, cache, lengths)
    assert f"bf16[4,{SHORT_SEQ},{4 * head_dim}]" in kernel  # the cache as a free view, not a transposed copy


@pytest.mark.parametrize("impl, axes, global_q, local_q", [
    ("pallas", {"data": 2, "tensor": 2}, "bf16[2,4096,512]", "bf16[1,4096,256]"),
    ("ring", {"context": 2, "tensor": 2}, "bf16[2,4096,512]", "bf16[2,2048,256]"),
])
def test_the_models_attention_on_a_sharded_mesh_compiles_as_per_device_mosaic_kernels(impl, axes, global_q, local_q):
    """research/models/layers.attention on 4 v5e chips, lowered for TPU from this CPU host as
    research/tools/aot.py lowers a train step: every Mosaic kernel works on one device's share of
    the q columns [b, s, heads·d] (GSPMD cannot partition a Mosaic kernel: without shard_map the
    compile fails). "pallas" over data 2 × tensor 2: the forward, dQ and dK/dV kernels on [1, 4096, 2·128];
    "ring" over context 2 × tensor 2: the ring's per-hop kernels on half sequences [2, 2048, 2·128]."""
    chips = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2", chip_config_name="default",
                                         chips_per_host_bounds=(2, 2, 1), num_slices=1).devices
    mesh = make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1, "expert": 1, "context": 1,
                                                **axes}), chips)
    batch, seq, head = (name if name in mesh.shape else None for name in ("data", "context", "tensor"))
    heads = NamedSharding(mesh, P(batch, seq, head))
    q, kv = (jax.ShapeDtypeStruct((2, SEQ, h, HEAD_DIM), jnp.bfloat16, sharding=heads) for h in (4, 2))
    positions = jax.ShapeDtypeStruct((2, SEQ), jnp.int32, sharding=NamedSharding(mesh, P(batch, seq)))

    def gradients(q, k, v, positions):
        def loss(*qkv):
            return attention(*qkv, positions, positions, impl=impl, mesh=mesh).sum(dtype=jnp.float32)
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    with lowering_for("tpu"):
        text = jax.jit(gradients).lower(q, kv, kv, positions).compile().as_text()
    kernels = [line for line in text.splitlines() if MOSAIC_KERNEL in line]
    assert len(kernels) >= 3
    assert any(local_q in line for line in kernels) and not any(global_q in line for line in kernels)


def test_lowering_for_rejects_an_unknown_target():
    with pytest.raises(ValueError, match="'cpu' is not one of"), lowering_for("cpu"):
        pass
