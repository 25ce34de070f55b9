"""The compiled flash-attention program holds no seq × seq buffer at seq 4096; the dense reference does.

Both are compiled (not run) on CPU for batch 1, 2 query heads sharing 1 K/V head, head_dim 128,
bfloat16, causal; there the kernels run in interpret mode and lower to ordinary HLO loops. Evidence,
for the forward pass and for the gradient program (forward + backward):
  1. the largest array anywhere in the optimised HLO has fewer than seq² elements;
  2. XLA's buffer assignment needs less temporary memory than one float32 seq × seq score matrix.
The reference fails both checks, which shows that they detect such a buffer.
"""
import math
import re

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.attention_reference import attention_reference
from pallas_kernels.flash_attention import flash_attention

SEQ = 4096
SCORE_MATRIX_BYTES = SEQ * SEQ * 4
HLO_ARRAY_SHAPE = re.compile(r"\b(?:pred|bf16|[fsuc]\d+)\[([\d,]*)\]")


def largest_array_elements(hlo_text):
    """The element count of the largest array shape written in an HLO module's text."""
    return max(math.prod(int(d) for d in dims.split(",") if d) for dims in HLO_ARRAY_SHAPE.findall(hlo_text))


def compile_attention(attention, backward):
    """Compiles attention (or its gradient in q, k, v) at seq 4096 without running it."""
    q = jax.ShapeDtypeStruct((1, SEQ, 2, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, SEQ, 1, 128), jnp.bfloat16)

    def forward(q, k, v):
        return attention(q, k, v, causal=True)

    def gradients(q, k, v):
        return jax.grad(lambda *qkv: forward(*qkv).astype(jnp.float32).sum(), argnums=(0, 1, 2))(q, k, v)

    return jax.jit(gradients if backward else forward).lower(q, kv, kv).compile()


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_and_backward"])
def test_flash_attention_holds_no_seq_by_seq_buffer(backward):
    program = compile_attention(flash_attention, backward)
    assert largest_array_elements(program.as_text()) < SEQ * SEQ
    assert program.memory_analysis().temp_size_in_bytes < SCORE_MATRIX_BYTES


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_and_backward"])
def test_reference_holds_seq_by_seq_buffers(backward):
    program = compile_attention(attention_reference, backward)
    assert largest_array_elements(program.as_text()) >= SEQ * SEQ
    assert program.memory_analysis().temp_size_in_bytes >= SCORE_MATRIX_BYTES
