"""research/tools/hlo_collectives.py: bytes per chip of each collective, read from programs the TPU compiler built."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research.tools import aot
from research.tools.hlo_collectives import KINDS, collective_bytes, group_size

ROWS, COLUMNS = 1024, 256  # one chip's block: bf16[1024, 256], 512 KiB
BLOCK = ROWS * COLUMNS * 2


@pytest.fixture(scope="module")
def mesh():
    """v5p-8's four chips as a 2 × 2 mesh."""
    return Mesh(np.asarray(aot.slice_devices(aot.parse_slice("v5p-8"))).reshape(2, 2), ("x", "y"))


def compiled_text(mesh, body) -> str:
    """`body` over one bf16[1024, 256] block per chip, compiled for the TPU."""
    spec = P(("x", "y"))
    program = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec))
    blocks = jax.ShapeDtypeStruct((4 * ROWS, COLUMNS), jnp.bfloat16, sharding=NamedSharding(mesh, spec))
    return program.lower(blocks).compile().as_text()


RING = [(0, 1), (1, 0)]
CASES = {
    # kind: (body, bytes one chip sends): p the group, N the whole buffer
    "all-gather": (lambda b: lax.all_gather(b, "y", tiled=True)[:ROWS], (2 - 1) / 2 * 2 * BLOCK),  # N = 2 blocks
    "reduce-scatter": (lambda b: jnp.tile(lax.psum_scatter(b, "x", tiled=True), (2, 1)), (2 - 1) / 2 * BLOCK),
    "all-reduce": (lambda b: lax.psum(b, ("x", "y")), 2 * (4 - 1) / 4 * BLOCK),
    "all-to-all": (lambda b: lax.all_to_all(b, ("x", "y"), 0, 0, tiled=True), (4 - 1) / 4 * BLOCK),
    "collective-permute": (lambda b: lax.ppermute(b, "y", RING), BLOCK),
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_collective_of_a_compiled_shard_map_program_counts_its_ring_bytes(mesh, kind):
    body, expected = CASES[kind]
    sent = collective_bytes(compiled_text(mesh, body))
    assert sent[kind] == expected
    assert sum(sent.values()) == expected  # nothing else counted


def test_a_gspmd_reduce_scatter_written_as_an_all_reduce_fusion_counts_as_one(mesh):
    """A matmul contracting a sharded dimension into a sharded output: the compiler writes the
    reduce-scatter as a fusion calling `all-reduce-scatter` (an all-reduce, then each chip's slice)."""
    flat = Mesh(mesh.devices.reshape(4), ("x",))

    def sharded(*spec):
        return NamedSharding(flat, P(*spec))

    x = jax.ShapeDtypeStruct((512, 1024), jnp.float32, sharding=sharded(None, "x"))
    w = jax.ShapeDtypeStruct((1024, 256), jnp.float32, sharding=sharded("x", None))
    text = jax.jit(lambda a, b: a @ b, out_shardings=sharded("x", None)).lower(x, w).compile().as_text()
    assert "calls=%all-reduce-scatter" in text
    assert collective_bytes(text) == {**dict.fromkeys(KINDS, 0.0), "reduce-scatter": (4 - 1) / 4 * 512 * 256 * 4}


@pytest.mark.parametrize("instruction, size", [
    ("all-reduce(%a), replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add", 4),
    ("all-gather(%a), replica_groups=[2,4]<=[8], dimensions={0}", 4),
    ("all-gather(%a), replica_groups=[4,2]<=[2,4]T(1,0), dimensions={0}", 2),
    ("all-reduce(%a), replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, to_apply=%add", 4),
    ("all-reduce(%a), replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0','axis_1'}, to_apply=%add", 8),
    ("all-to-all(%a), replica_groups=mesh['fsdp'=8,'expert'=16], device_ids=([8,16]T(1,0)) {'expert'}", 16),
])
def test_group_sizes_in_every_replica_group_notation(instruction, size):
    assert group_size(instruction) == size


def test_an_instruction_without_replica_groups_is_refused():
    with pytest.raises(ValueError, match="cannot read the replica groups"):
        group_size("all-reduce(%a), to_apply=%add")
