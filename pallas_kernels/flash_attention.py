"""Flash attention (FlashAttention-2) in Pallas: a forward kernel and two backward kernels under a custom VJP.

Math. With S = scale · Q Kᵀ, P = softmax(S) over the keys each query may see, O = P V:

Forward, for one query block i walking the key blocks j (the online softmax):
    m_new = max(m, rowmax S_ij)                     running row maximum
    α     = exp(m − m_new)                          rescales what was summed under the old maximum
    ℓ     ← α ℓ + rowsum exp(S_ij − m_new)          running softmax denominator
    A     ← α A + exp(S_ij − m_new) V_j             running unnormalised output
    O_i = A / ℓ, and the log-sum-exp L_i = m + log ℓ is saved for the backward pass.

Backward, recomputing P_ij = exp(S_ij − L_i) block by block:
    D_i   = rowsum(dO_i ∘ O_i)
    dP_ij = dO_i V_jᵀ,   dS_ij = P_ij ∘ (dP_ij − D_i)
    dQ_i  = scale Σ_j dS_ij K_j                      kernel 1, one program per query block
    dK_j  = scale Σ_i dS_ijᵀ Q_i,  dV_j = Σ_i P_ijᵀ dO_i   kernel 2, one program per key block
Kernel 2 works on transposed tiles (keys along rows), so every product is a b or a bᵀ, and
L, D are read as lane-dense rows.

Exponentials are taken base 2 with the scale folded in: exp(scale · s − m) = 2^(c · s − c · m'),
c = scale · log₂e, for a raw product s = q·k and a maximum m' kept in raw units (so scale > 0), and
P = 2^(c · s − log₂e · L) in the backward pass: one fused multiply-add and one exp2 per score.

Gradient of the log-sum-exp. `flash_attention_with_lse` also returns L, and L may carry a
cotangent dL (ring attention merges partial results through it). Since ∂L_i/∂S_ij = P_ij, it adds
dL_i P_ij to dS_ij, which is the same backward with D_i replaced by D_i − dL_i.

Blocks of a longer attention. `flash_attention_with_lse` and `flash_attention_backward` also take
a key sequence of another length than the queries, with its own segment ids: (O, L) of a block of
keys, and the gradients of a block from the final O and L of all blocks (P_ij = exp(S_ij − L_i)
with the final L is the block's share of the full softmax). That is the per-block work of ring
attention (research/parallel/ring_attention.py).

Masks. Query i sees key j when j < kv_len (padding), j ≤ i (causal) and the segment ids match.
Key blocks that no query of the block can see are never visited (causal skipping), and blocks
every query sees in full run without building a mask. A row with no visible key has ℓ = 0; it
yields O = 0 and L = −inf, and its recomputed P is 0, so no NaN appears anywhere.

Layout. A kernel block is one head's d columns of a block of sequence positions. Where that is
a legal tile, [b, s, heads, d] arrays are viewed, for free, as [b, s, heads·d] and a block is a
column block of it; Mosaic tiles a block's last two dims by (8, 128) unless a dim is whole, so on
TPU with head_dim not a multiple of 128 (64, 96, ...) the wrapper transposes to [b, heads, s, d],
where the block's last dim is the whole head_dim (`_Tiling.heads_major`; the interpreter follows
Mosaic, Triton has no such rule and keeps the free view). That costs one HBM read and write of
q, k, v and out going in and of dO, dq, dk, dv coming back, O(s·d) per head against the kernels'
O(s²·d); behind the q/k/v/o projections XLA folds most of them into the matmuls' layouts (compiled
for v5p, seq 4096, width 1024, forward and backward: 1.4% more bytes outside the kernels at
head_dim 64 than at 128).

Grouped-query attention: query head n reads the K/V head n // group through the index map, so K
and V are never repeated. dK and dV are produced per query head (float32 when group > 1) and
summed over each group afterwards, as FlashAttention-2 does. Inputs may be float32 or bfloat16;
all softmax statistics and matmul accumulations are float32 and the output has the input's dtype.

Launch order. Every kernel's grid is (batch, head, block) with the block innermost, which Mosaic
walks in order. On a GPU the backward kernels launch as (block, batch, head), block fastest, and
the dQ kernel takes causal query blocks longest first (`_Tiling.grid`, `GPU_LAUNCH`).

Backends. On CPU the kernels run in interpret mode. Compiled, they target Triton on GPU and
Mosaic on TPU (also when a CPU host lowers ahead of time for TPU). The block shapes follow
Mosaic's rule (last two block dims multiples of (8, 128) or the full array dims, hence the layout
above) and Triton's (tiles that are powers of two of at least 16); `_check_tiling` rejects what the
target cannot tile.
A program holds one head's whole K/V (forward, dQ) or Q/dO (dK/dV) sequence in fast memory: on TPU
the kernels raise Mosaic's scoped VMEM limit to what their blocks need (`mosaic_vmem_bytes`), so
with head_dim 128 one chip's VMEM holds sequences up to about 48k tokens on v5p (64 MiB) and 96k on
v5e/v6e (128 MiB); ring attention splits longer ones over devices.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.compile_target import compile_target

MIN_BLOCK = 16
LOG2_E = math.log2(math.e)
# Launch orders on a GPU (`_Tiling.grid`; H200, seq 1k-16k, d 128, bf16): backward kernels block-first
# and dQ longest-first made forward+backward 4-11% faster; the forward kernel block-first was up to 14%
# slower, and longest-first helped it only at seq 1k.
GPU_LAUNCH = {"blocks_first": frozenset({"dq", "dkdv"}), "longest_first": frozenset({"dq"})}
TRITON_SHARED_MEMORY = 224 * 1024  # bytes a Hopper thread block may use (227 KiB, less Triton's scratch)
MOSAIC_DEFAULT_VMEM = 16 * 2**20  # Mosaic's default scoped VMEM limit on v5e and v5p (16.1 MiB failed on both)
MOSAIC_VMEM_HEADROOM = 2 * 2**20  # for Mosaic's internal scratch, on top of the kernel's own buffers


@dataclasses.dataclass(frozen=True)
class _Tiling:
    """Static description of one call: sizes, block sizes and which masks apply."""

    batch: int
    q_len: int
    kv_len: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_q: int
    block_k: int
    causal: bool
    has_segments: bool
    sm_scale: float
    target: str  # "interpret", "gpu" (Triton) or "tpu" (Mosaic)
    itemsize: int  # bytes per input element
    blocks_first: frozenset = frozenset()  # kernels launched as (block, batch, head); see `grid`
    longest_first: frozenset = frozenset()  # query-block kernels ("forward", "dq") taking causal blocks last-first

    @property
    def interpret(self):
        return self.target == "interpret"

    @property
    def heads_major(self):
        """Whether the kernels see [b, heads, s, d] (a transpose) instead of the free view [b, s, heads·d]:
        on Mosaic (and the interpreter, which follows it) when one head's d columns are not a whole
        number of 128-lane tiles."""
        return self.target != "gpu" and self.head_dim % 128 != 0

    def compiler_params(self, kernel: str, blocks):
        """The compiler's parameters for `kernel`, whose blocks are `blocks` [(block_shape, dtype)].

        GPU, Triton's (without them Pallas would pick Mosaic GPU): the forward kernel streams K and V
        tiles through a software pipeline three deep when the tiles and the Q block fit in
        TRITON_SHARED_MEMORY; the backward kernels, which hold more tiles each, two deep. (H200,
        seq 4096, causal, bf16, 128 × 128 blocks: three stages made the forward 16% faster; three
        stages overflow shared memory in the backward kernels.)
        TPU, Mosaic's scoped VMEM limit when the blocks need more than its default
        (`mosaic_vmem_bytes`): a kernel holds one head's whole K/V (or Q/dO) sequence, which
        passes the default 16 MiB at seq 16384 with head_dim 128.
        """
        if self.target == "tpu":
            need = mosaic_vmem_bytes(blocks, self.block_q, self.block_k, self.head_dim)
            return pltpu.CompilerParams(vmem_limit_bytes=need) if need > MOSAIC_DEFAULT_VMEM else None
        if self.target != "gpu":
            return None
        forward_bytes = (self.block_q + 2 * 3 * self.block_k) * self.head_dim * self.itemsize
        stages = 3 if kernel == "forward" and forward_bytes <= TRITON_SHARED_MEMORY else 2
        return pltriton.CompilerParams(num_warps=4 if self.head_dim <= 64 else 8, num_stages=stages)

    def grid(self, kernel: str, num_blocks: int):
        """The launch grid of `kernel` ("forward", "dq" or "dkdv") over (batch, query head, block of the
        kernel's own side): (batch, head, block), or (block, batch, head) for kernels in `blocks_first`.

        Mosaic walks the grid in order with the last axis innermost, so with (batch, head, block)
        consecutive programs keep the same K/V (or Q, dO) block resident and it is fetched once.
        A GPU launches thread blocks with the first axis fastest: block-first, the programs resident
        at one time share one head's K/V (or Q, dO) through L2.
        """
        if kernel in self.blocks_first:
            return (num_blocks, self.batch, self.num_heads)
        return (self.batch, self.num_heads, num_blocks)

    def grid_indices(self, *program_ids, kernel: str):
        """(batch, head, block) of a program of `kernel`, from its grid indices.

        Query-block kernels in `longest_first` take their blocks last-first under a causal mask: the
        rows that visit the most key blocks start first and the launch ends on short ones, so no SM
        runs a long tail alone. (The dK/dV kernel is longest first already: key block 0 receives
        gradient from every query block.)
        """
        if kernel in self.blocks_first:
            block, batch, head = program_ids
        else:
            batch, head, block = program_ids
        if kernel in self.longest_first and self.causal:
            block = self.num_q_blocks - 1 - block
        return batch, head, block

    def own_block(self, kernel: str):
        """Inside a kernel: the index of the block this program owns."""
        program_ids = [pl.program_id(axis) for axis in range(3)]
        return self.grid_indices(*program_ids, kernel=kernel)[2]

    @property
    def exp2_scale(self):
        """scale · log₂e: exp(scale · s − m) = 2^(exp2_scale · s − log₂e · m)."""
        return self.sm_scale * LOG2_E

    @property
    def group(self):
        return self.num_heads // self.num_kv_heads

    @property
    def num_q_blocks(self):
        return pl.cdiv(self.q_len, self.block_q)

    @property
    def num_kv_blocks(self):
        return pl.cdiv(self.kv_len, self.block_k)

    @property
    def q_len_padded(self):
        return self.num_q_blocks * self.block_q

    @property
    def kv_len_padded(self):
        return self.num_kv_blocks * self.block_k

    @property
    def keys_padded(self):
        return self.kv_len_padded != self.kv_len

    @property
    def needs_mask(self):
        return self.causal or self.has_segments or self.keys_padded


def flash_attention(q, k, v, *, causal=False, segment_ids=None, sm_scale=None, block_q=128, block_k=128,
                    interpret=None):
    """Memory-efficient exact attention softmax(scale · q kᵀ + mask) v, differentiable in q, k, v.

    Args:
      q: [batch, seq, heads, head_dim]. k, v: [batch, seq, kv_heads, head_dim] with heads % kv_heads == 0.
      causal: query i sees only keys j ≤ i.
      segment_ids: optional int [batch, seq]; attention stays within equal ids (packed sequences).
        Composes with `causal`.
      sm_scale: score scale (positive), default head_dim ** -0.5.
      block_q, block_k: query/key tile lengths. A block longer than the sequence shrinks to the
        sequence length rounded up to a power of two (at least 16); the sequence is padded to a
        whole number of blocks and the padding masked.
      interpret: run the kernels in the Pallas interpreter; None means "when the default backend is CPU".

    Returns:
      [batch, seq, heads, head_dim] in q's dtype.

    Raises:
      ValueError: mismatched shapes or dtypes, heads not divisible by kv_heads, segment_ids of the
        wrong shape, or block sizes the compile target cannot tile.
    """
    _check_qkv(q, k, v, same_length=True)
    _check_segment_ids("segment_ids", segment_ids, q.shape[0], q.shape[1])
    tiling = _make_tiling(q, k, segment_ids is not None, causal, sm_scale, block_q, block_k, interpret)
    return _flash_attention(q, k, v, segment_ids, segment_ids, tiling)[0]


def flash_attention_with_lse(q, k, v, *, causal=False, q_segment_ids=None, kv_segment_ids=None, sm_scale=None,
                             block_q=128, block_k=128, interpret=None):
    """Attention of queries over a block of keys, with its log-sum-exp; differentiable in q, k, v
    through both outputs.

        out_i = Σ_j P_ij v_j,   L_i = log Σ_j exp(S_ij)   over the keys j that query i sees.

    Args:
      q: [batch, q_len, heads, head_dim]. k, v: [batch, kv_len, kv_heads, head_dim]; kv_len may
        differ from q_len.
      causal: query i sees only keys j ≤ i (by index, both sequences counted from 0).
      q_segment_ids, kv_segment_ids: optional int [batch, q_len] and [batch, kv_len], both or neither;
        query i sees key j only when their ids are equal.
      sm_scale, block_q, block_k, interpret: as for `flash_attention`.

    Returns:
      (out [batch, q_len, heads, head_dim] in q's dtype, lse [batch, q_len, heads] float32). A query
      that sees no key gets out = 0 and lse = −inf.

    Raises:
      ValueError: as `flash_attention`, and when only one of the segment ids is given.
    """
    _check_qkv(q, k, v, same_length=False)
    has_segments = _check_segment_pair(q, k, q_segment_ids, kv_segment_ids)
    tiling = _make_tiling(q, k, has_segments, causal, sm_scale, block_q, block_k, interpret)
    return _flash_attention(q, k, v, q_segment_ids, kv_segment_ids, tiling)


def flash_attention_backward(q, k, v, out, lse, d_out, *, causal=False, q_segment_ids=None, kv_segment_ids=None,
                             sm_scale=None, block_q=128, block_k=128, interpret=None):
    """Gradients (dq, dk, dv) of a block of keys, given the final output and log-sum-exp of the queries.

    `out` [batch, q_len, heads, head_dim] and `lse` [batch, q_len, heads] are the attention of q over
    all key blocks (of which k, v is one) and d_out the cotangent of `out`. With P_ij = exp(S_ij − L_i)
    and D_i = rowsum(dO_i ∘ O_i), this block's terms are
        dq = scale Σ_j P_ij (dO_i·v_j − D_i) k_j,  dk_j = scale Σ_i P_ij (dO_i·v_j − D_i) q_i,
        dv_j = Σ_i P_ij dO_i,
    and the gradients of the whole attention are the sums of these over the key blocks.
    Arguments and errors as for `flash_attention_with_lse`; results shaped like q, k, v.
    """
    _check_qkv(q, k, v, same_length=False)
    has_segments = _check_segment_pair(q, k, q_segment_ids, kv_segment_ids)
    for name, x, shape in (("out", out, q.shape), ("d_out", d_out, q.shape), ("lse", lse, q.shape[:3])):
        if x.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
    t = _make_tiling(q, k, has_segments, causal, sm_scale, block_q, block_k, interpret)
    q_blocked, k_blocked, v_blocked = (_to_blocked(x, length, t) for x, length in
                                       ((q, t.q_len_padded), (k, t.kv_len_padded), (v, t.kv_len_padded)))
    residuals = (q_blocked, k_blocked, v_blocked, q_segment_ids, kv_segment_ids,
                 _to_blocked(out, t.q_len_padded, t), _lse_to_kernel(lse, t))
    dq, dk, dv, _, _ = _backward(t, residuals, (d_out, None))
    return dq, dk, dv


def _check_qkv(q, k, v, same_length):
    """Raises ValueError unless q [b, s, h, d] and k, v [b, s', kv_h, d] fit together (s' = s if `same_length`)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be [batch, seq, heads, head_dim], got shape {x.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {k.shape} and v {v.shape}")
    shared = (0, 1, 3) if same_length else (0, 3)
    if any(k.shape[axis] != q.shape[axis] for axis in shared):
        names = "batch, seq and head_dim" if same_length else "batch and head_dim"
        raise ValueError(f"q {q.shape} and k/v {k.shape} must agree in {names}")
    if q.shape[1] < 1 or k.shape[1] < 1:
        raise ValueError(f"the sequence length must be positive, got q {q.shape} and k/v {k.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"heads ({q.shape[2]}) must be divisible by kv_heads ({k.shape[2]})")
    if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def _check_segment_ids(name, ids, batch, length):
    if ids is not None and (ids.shape != (batch, length) or not jnp.issubdtype(ids.dtype, jnp.integer)):
        raise ValueError(f"{name} must be integer [batch, seq] = {(batch, length)}, got {ids.dtype} {ids.shape}")


def _check_segment_pair(q, k, q_segment_ids, kv_segment_ids):
    """Validates the query and key segment ids; returns whether there are any."""
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    _check_segment_ids("q_segment_ids", q_segment_ids, q.shape[0], q.shape[1])
    _check_segment_ids("kv_segment_ids", kv_segment_ids, k.shape[0], k.shape[1])
    return q_segment_ids is not None


def _make_tiling(q, k, has_segments, causal, sm_scale, block_q, block_k, interpret):
    """Fixes the static tiling of validated inputs; raises ValueError for blocks the target cannot tile."""
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"{name} must be a positive int, got {block!r}")
    if sm_scale is not None and not sm_scale > 0:
        raise ValueError(f"sm_scale must be positive, got {sm_scale!r}")
    batch, q_len, num_heads, head_dim = q.shape
    kv_len, num_kv_heads = k.shape[1], k.shape[2]
    target = compile_target(interpret)
    tiling = _Tiling(
        batch=batch, q_len=q_len, kv_len=kv_len, num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, block_q=min(block_q, _longest_useful_block(q_len)),
        block_k=min(block_k, _longest_useful_block(kv_len)), causal=bool(causal), has_segments=has_segments,
        sm_scale=float(head_dim ** -0.5 if sm_scale is None else sm_scale), target=target,
        itemsize=jnp.dtype(q.dtype).itemsize, **(GPU_LAUNCH if target == "gpu" else {}))
    _check_tiling(tiling)
    return tiling


def _longest_useful_block(length):
    return max(MIN_BLOCK, pl.next_power_of_2(length))


def _check_tiling(t):
    """Rejects block shapes the compile target cannot tile (the interpreter takes any)."""
    if t.interpret:
        return
    if t.target == "gpu":
        for name, size in (("block_q", t.block_q), ("block_k", t.block_k), ("head_dim", t.head_dim)):
            if size < MIN_BLOCK or size & (size - 1):
                raise ValueError(f"{name}={size}: Triton tiles must be powers of two of at least {MIN_BLOCK}")
        return
    for name, size in (("block_q", t.block_q), ("block_k", t.block_k)):
        if size % 8:
            raise ValueError(f"{name}={size}: Mosaic TPU needs blocks that are multiples of 8")


def mosaic_vmem_bytes(blocks, block_q: int, block_k: int, head_dim: int) -> int:
    """VMEM a Mosaic kernel with these blocks needs: every in/out block twice (Pallas double-buffers
    them), each padded to whole (8·4/itemsize sublanes, 128 lanes) tiles, plus the float32 working
    tiles (scores, probabilities, dS: a few [block_q, block_k]; accumulators [block, head_dim]) and
    MOSAIC_VMEM_HEADROOM for the compiler's own scratch; rounded up to MiB."""
    def padded_bytes(shape, dtype):
        itemsize = jnp.dtype(dtype).itemsize
        *leading, rows, cols = [1 if size is None else size for size in (1, *shape)]
        rows = -(-rows // (8 * 4 // itemsize)) * (8 * 4 // itemsize)
        cols = -(-cols // 128) * 128
        return math.prod(leading) * rows * cols * itemsize

    buffers = 2 * sum(padded_bytes(shape, dtype) for shape, dtype in blocks)
    working = 4 * (4 * block_q * block_k + 2 * max(block_q, block_k) * head_dim)
    need = buffers + working + MOSAIC_VMEM_HEADROOM
    return -(-need // 2**20) * 2**20


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash_attention(q, k, v, q_segment_ids, kv_segment_ids, tiling):
    return _forward(q, k, v, q_segment_ids, kv_segment_ids, tiling)[0]


def _forward(q, k, v, q_segment_ids, kv_segment_ids, t):
    """Runs the forward kernel; returns (out, lse) and the residuals of the backward pass."""
    q_blocked = _to_blocked(q, t.q_len_padded, t)
    k_blocked = _to_blocked(k, t.kv_len_padded, t)
    v_blocked = _to_blocked(v, t.kv_len_padded, t)
    segments_for_q = _segment_inputs(q_segment_ids, kv_segment_ids, t, for_kv_blocks=False)
    specs = _BlockSpecs(t, "forward")
    out_blocked, lse = _pallas_call(
        _forward_kernel, t, "forward", t.num_q_blocks,
        in_specs=[specs.q_block, specs.kv_all, specs.kv_all, *specs.segments_for_q_block],
        out_specs=[specs.q_block, specs.stats_block],
        out_shape=[jax.ShapeDtypeStruct(q_blocked.shape, q.dtype),
                   jax.ShapeDtypeStruct((t.batch, t.num_heads, t.q_len_padded, 1), jnp.float32)],
    )(q_blocked, k_blocked, v_blocked, *segments_for_q)
    outputs = (_from_blocked(out_blocked, t.q_len, t), _lse_from_kernel(lse, t))
    return outputs, (q_blocked, k_blocked, v_blocked, q_segment_ids, kv_segment_ids, out_blocked, lse)


def _backward(t, residuals, cotangents):
    """Runs the dQ and dK/dV kernels; returns (dq, dk, dv) shaped like (q, k, v), and no cotangents
    for the integer segment ids. A cotangent dL of the log-sum-exp enters as D − dL."""
    q_blocked, k_blocked, v_blocked, q_segment_ids, kv_segment_ids, out_blocked, lse = residuals
    d_out, d_lse = cotangents
    segments_for_q = _segment_inputs(q_segment_ids, kv_segment_ids, t, for_kv_blocks=False)
    segments_for_kv = _segment_inputs(q_segment_ids, kv_segment_ids, t, for_kv_blocks=True)
    d_out_blocked = _to_blocked(d_out, t.q_len_padded, t)
    delta = _row_dot(out_blocked, d_out_blocked, t)
    if d_lse is not None:
        delta = delta - _lse_to_kernel(d_lse, t)
    specs = _BlockSpecs(t, "dq")
    dq_blocked = _pallas_call(
        _dq_kernel, t, "dq", t.num_q_blocks,
        in_specs=[specs.q_block, specs.kv_all, specs.kv_all, specs.q_block, specs.stats_block,
                  specs.stats_block, *specs.segments_for_q_block],
        out_specs=specs.q_block,
        out_shape=jax.ShapeDtypeStruct(q_blocked.shape, q_blocked.dtype),
    )(q_blocked, k_blocked, v_blocked, d_out_blocked, lse, delta, *segments_for_q)
    partial_dtype = k_blocked.dtype if t.group == 1 else jnp.float32
    partial_shape = _blocked_shape(t, t.kv_len_padded, t.num_heads)
    specs = _BlockSpecs(t, "dkdv")
    dk_blocked, dv_blocked = _pallas_call(
        _dkdv_kernel, t, "dkdv", t.num_kv_blocks,
        in_specs=[specs.q_all, specs.kv_block, specs.kv_block, specs.q_all, specs.stats_rows,
                  specs.stats_rows, *specs.segments_for_kv_block],
        out_specs=[specs.kv_block_per_query_head, specs.kv_block_per_query_head],
        out_shape=[jax.ShapeDtypeStruct(partial_shape, partial_dtype)] * 2,
    )(q_blocked, k_blocked, v_blocked, d_out_blocked, _as_rows(lse, t), _as_rows(delta, t), *segments_for_kv)
    dq = _from_blocked(dq_blocked, t.q_len, t)
    dk = _sum_over_groups(dk_blocked, t).astype(k_blocked.dtype)
    dv = _sum_over_groups(dv_blocked, t).astype(v_blocked.dtype)
    return dq, dk, dv, None, None


_flash_attention.defvjp(_forward, _backward)


def _pallas_call(kernel, t, name, num_blocks, *, in_specs, out_specs, out_shape):
    """`pallas_call` of kernel `name` ("forward", "dq" or "dkdv") over its grid of `num_blocks` blocks,
    with the target's compiler parameters; returns a function of the kernel's inputs."""

    def call(*inputs):
        outputs = out_shape if isinstance(out_shape, list) else [out_shape]
        specs = [*in_specs, *(out_specs if isinstance(out_specs, list) else [out_specs])]
        blocks = [(spec.block_shape, x.dtype) for spec, x in zip(specs, [*inputs, *outputs], strict=True)]
        return pl.pallas_call(
            functools.partial(kernel, t=t), grid=t.grid(name, num_blocks), in_specs=in_specs, out_specs=out_specs,
            out_shape=out_shape, interpret=t.interpret, compiler_params=t.compiler_params(name, blocks),
            name=f"flash_attention_{name}")(*inputs)

    return call


class _BlockSpecs:
    """The BlockSpecs of one of the three kernels, over (batch, query head n, block index) in that
    kernel's grid order (`_Tiling.grid`). The forward and dQ kernels own a query block i and use the
    specs with i, the dK/dV kernel owns a key block j and uses those with j.

    Blocks of q, k, v and their kin are `rows` sequence positions of one head's d columns, in the
    kernels' layout (`_to_blocked`). Per-query statistics (L, D) and segment ids come as a column
    [len, 1] for the block a program owns, and as rows [num_blocks, block] (a free reshape) for the
    blocks a program loops over.
    """

    def __init__(self, t, kernel):
        group = t.group

        def spec(shape, index_map):
            """A BlockSpec whose index_map takes (batch, head, block), whatever the grid's order."""
            return pl.BlockSpec(shape, lambda *ids: index_map(*t.grid_indices(*ids, kernel=kernel)))

        def head_rows(rows, index_map):
            """Blocks of `rows` positions × one head's columns; index_map gives (batch, row block, head)."""
            if not t.heads_major:
                return spec((None, rows, t.head_dim), index_map)
            return spec((None, None, rows, t.head_dim), lambda *ids: _heads_major_index(*index_map(*ids)))

        self.q_block = head_rows(t.block_q, lambda b, n, i: (b, i, n))
        self.kv_all = head_rows(t.kv_len_padded, lambda b, n, i: (b, 0, lax.div(n, group)))
        self.stats_block = spec((None, None, t.block_q, 1), lambda b, n, i: (b, n, i, 0))
        self.q_all = head_rows(t.q_len_padded, lambda b, n, j: (b, 0, n))
        self.kv_block = head_rows(t.block_k, lambda b, n, j: (b, j, lax.div(n, group)))
        self.kv_block_per_query_head = head_rows(t.block_k, lambda b, n, j: (b, j, n))
        self.stats_rows = spec((None, None, t.num_q_blocks, t.block_q), lambda b, n, j: (b, n, 0, 0))
        q_ids_block = spec((None, t.block_q, 1), lambda b, n, i: (b, i, 0))
        kv_ids_rows = spec((None, t.num_kv_blocks, t.block_k), lambda b, n, i: (b, 0, 0))
        kv_ids_block = spec((None, t.block_k, 1), lambda b, n, j: (b, j, 0))
        q_ids_rows = spec((None, t.num_q_blocks, t.block_q), lambda b, n, j: (b, 0, 0))
        self.segments_for_q_block = [q_ids_block, kv_ids_rows] if t.has_segments else []
        self.segments_for_kv_block = [kv_ids_block, q_ids_rows] if t.has_segments else []


def _heads_major_index(batch, row_block, head):
    """Block index in [b, heads, s, d] of the block at (batch, row block, head)."""
    return batch, head, row_block, 0


def _blocked_shape(t, length, heads):
    """Shape of `heads` heads of `length` positions in the kernels' layout."""
    if t.heads_major:
        return (t.batch, heads, length, t.head_dim)
    return (t.batch, length, heads * t.head_dim)


def _to_blocked(x, padded_len, t):
    """[b, s, heads, d] -> the kernels' layout, zero-padding the sequence: [b, heads, padded_len, d]
    (a transpose) when `t.heads_major`, else [b, padded_len, heads·d] (a free reshape)."""
    batch, seq_len, heads, head_dim = x.shape
    x = jnp.pad(x, ((0, 0), (0, padded_len - seq_len), (0, 0), (0, 0)))
    if t.heads_major:
        return x.transpose(0, 2, 1, 3)
    return x.reshape(batch, padded_len, heads * head_dim)


def _from_blocked(x, seq_len, t):
    """Inverse of `_to_blocked`: the kernels' layout -> [b, seq_len, heads, d]."""
    if t.heads_major:
        return x.transpose(0, 2, 1, 3)[:, :seq_len]
    batch, padded_len, width = x.shape
    return x.reshape(batch, padded_len, width // t.head_dim, t.head_dim)[:, :seq_len]


def _sum_over_groups(x, t):
    """Per-query-head dK or dV in the kernels' layout -> [b, kv_len, kv_heads, d], summing each group."""
    grouped = _from_blocked(x, t.kv_len, t).reshape(t.batch, t.kv_len, t.num_kv_heads, t.group, t.head_dim)
    return grouped.sum(axis=3, dtype=jnp.float32)


def _segment_inputs(q_segment_ids, kv_segment_ids, t, for_kv_blocks):
    """Segment ids as kernel inputs, padded: (own side as a column, other side as rows).

    Query-block kernels get (q [b, q_len_padded, 1], kv [b, num_kv_blocks, block_k]);
    the key-block kernel gets (kv [b, kv_len_padded, 1], q [b, num_q_blocks, block_q]).
    """
    if q_segment_ids is None:
        return ()
    q_ids = jnp.pad(q_segment_ids.astype(jnp.int32), ((0, 0), (0, t.q_len_padded - t.q_len)))
    kv_ids = jnp.pad(kv_segment_ids.astype(jnp.int32), ((0, 0), (0, t.kv_len_padded - t.kv_len)))
    if for_kv_blocks:
        return kv_ids[:, :, None], q_ids.reshape(t.batch, t.num_q_blocks, t.block_q)
    return q_ids[:, :, None], kv_ids.reshape(t.batch, t.num_kv_blocks, t.block_k)


def _lse_from_kernel(lse, t):
    """The kernels' log-sum-exp [b, heads, q_len_padded, 1] -> [b, q_len, heads]."""
    return lse[:, :, :t.q_len, 0].transpose(0, 2, 1)


def _lse_to_kernel(lse, t):
    """[b, q_len, heads] -> [b, heads, q_len_padded, 1] float32. Padded queries get 0: finite, so that
    their P = exp(S − 0) times their zero dO adds nothing to dK, dV."""
    lse = jnp.pad(lse.astype(jnp.float32), ((0, 0), (0, t.q_len_padded - t.q_len), (0, 0)))
    return lse.transpose(0, 2, 1)[..., None]


def _as_rows(stats, t):
    """Per-query statistics [b, heads, q_len_padded, 1] -> [b, heads, num_q_blocks, block_q] (free)."""
    return stats.reshape(t.batch, t.num_heads, t.num_q_blocks, t.block_q)


def _row_dot(out_blocked, d_out_blocked, t):
    """D = rowsum(dO ∘ O) per query and head, float32 [b, heads, q_len_padded, 1]."""
    product = out_blocked.astype(jnp.float32) * d_out_blocked.astype(jnp.float32)
    if t.heads_major:
        return product.sum(axis=-1, keepdims=True)
    per_head = product.reshape(t.batch, t.q_len_padded, t.num_heads, t.head_dim).sum(axis=-1)
    return per_head.transpose(0, 2, 1)[..., None]


def _forward_kernel(*refs, t):
    """One query block of one head: online softmax over the key blocks it can see."""
    q_ref, k_ref, v_ref, *segment_refs, out_ref, lse_ref = refs
    q_block = t.own_block("forward")
    q = q_ref[...]
    q_ids = segment_refs[0][...] if segment_refs else None

    def visit(kv_block, carry, masked):
        acc, row_max, row_sum = carry  # row_max in units of the unscaled q·k
        keys = _block_slice(kv_block, t.block_k)
        products = _matmul_nt(q, k_ref[keys, :])
        if masked:
            visible = _visible(t, _positions(q_block, t.block_q, products.shape, 0),
                               _positions(kv_block, t.block_k, products.shape, 1), q_ids,
                               _row_of_ids(segment_refs, kv_block))
            products = jnp.where(visible, products, -jnp.inf)
        new_max = jnp.maximum(row_max, products.max(axis=1, keepdims=True))
        shift = t.exp2_scale * _finite_or_zero(new_max)
        probs = jnp.exp2(t.exp2_scale * products - shift)
        correction = jnp.exp2(t.exp2_scale * row_max - shift)
        row_sum = correction * row_sum + probs.sum(axis=1, keepdims=True)
        v = v_ref[keys, :]
        acc = correction * acc + _matmul(probs.astype(v.dtype), v)
        return acc, new_max, row_sum

    rows = (t.block_q, 1)
    init = (jnp.zeros((t.block_q, t.head_dim), jnp.float32), jnp.full(rows, -jnp.inf, jnp.float32),
            jnp.zeros(rows, jnp.float32))
    acc, row_max, row_sum = _fold_blocks(visit, _key_block_ranges(t, q_block), init)
    out_ref[...] = (acc / jnp.where(row_sum > 0, row_sum, 1.0)).astype(out_ref.dtype)
    lse_ref[...] = t.sm_scale * row_max + jnp.log(row_sum)


def _dq_kernel(*refs, t):
    """One query block of one head: dQ_i = scale Σ_j dS_ij K_j over the key blocks it can see."""
    q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, *segment_refs, dq_ref = refs
    q_block = t.own_block("dq")
    q, d_out, lse, delta = q_ref[...], d_out_ref[...], lse_ref[...], delta_ref[...]
    q_ids = segment_refs[0][...] if segment_refs else None

    def visit(kv_block, dq, masked):
        keys = _block_slice(kv_block, t.block_k)
        k, v = k_ref[keys, :], v_ref[keys, :]
        products = _matmul_nt(q, k)
        visible = None
        if masked:
            visible = _visible(t, _positions(q_block, t.block_q, products.shape, 0),
                               _positions(kv_block, t.block_k, products.shape, 1), q_ids,
                               _row_of_ids(segment_refs, kv_block))
        probs = _probabilities(products, lse, visible, t)
        d_scores = probs * (_matmul_nt(d_out, v) - delta)
        return dq + _matmul(d_scores.astype(k.dtype), k)

    dq = _fold_blocks(visit, _key_block_ranges(t, q_block), jnp.zeros((t.block_q, t.head_dim), jnp.float32))
    dq_ref[...] = (t.sm_scale * dq).astype(dq_ref.dtype)


def _dkdv_kernel(*refs, t):
    """One key block, for one query head, transposed (keys along rows):

    Sᵀ = scale · K_j Q_iᵀ,  Pᵀ = exp(Sᵀ − L_i),  dV_j = Σ_i Pᵀ dO_i,
    dSᵀ = Pᵀ ∘ (V_j dO_iᵀ − D_i),  dK_j = scale Σ_i dSᵀ Q_i.
    """
    q_ref, k_ref, v_ref, d_out_ref, lse_ref, delta_ref, *segment_refs, dk_ref, dv_ref = refs
    kv_block = t.own_block("dkdv")
    k, v = k_ref[...], v_ref[...]
    kv_ids = segment_refs[0][...] if segment_refs else None

    def visit(q_block, carry, masked):
        dk, dv = carry
        rows = _block_slice(q_block, t.block_q)
        q, d_out = q_ref[rows, :], d_out_ref[rows, :]
        products_t = _matmul_nt(k, q)
        visible_t = None
        if masked:
            visible_t = _visible(t, _positions(q_block, t.block_q, products_t.shape, 1),
                                 _positions(kv_block, t.block_k, products_t.shape, 0),
                                 _row_of_ids(segment_refs, q_block), kv_ids)
        probs_t = _probabilities(products_t, lse_ref[pl.ds(q_block, 1), :], visible_t, t)
        d_scores_t = probs_t * (_matmul_nt(v, d_out) - delta_ref[pl.ds(q_block, 1), :])
        dv = dv + _matmul(probs_t.astype(d_out.dtype), d_out)
        dk = dk + _matmul(d_scores_t.astype(q.dtype), q)
        return dk, dv

    zeros = jnp.zeros((t.block_k, t.head_dim), jnp.float32)
    dk, dv = _fold_blocks(visit, _query_block_ranges(t, kv_block), (zeros, zeros))
    dk_ref[...] = (t.sm_scale * dk).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _key_block_ranges(t, q_block):
    """Key blocks query block `q_block` visits, as (start, stop, masked) ranges.

    Causal: blocks past the diagonal are skipped. Without segments, whole key blocks free of padding
    need no mask, and under causal only those whose last key is at or before the block's first query.
    """
    stop = jnp.minimum(_cdiv((q_block + 1) * t.block_q, t.block_k), t.num_kv_blocks) if t.causal \
        else t.num_kv_blocks
    if not t.needs_mask:
        return ((0, stop, False),)
    if t.has_segments:
        first_masked = 0
    elif t.causal:
        first_masked = jnp.minimum(lax.div(q_block * t.block_q + 1, t.block_k), t.kv_len // t.block_k)
    else:
        first_masked = t.kv_len // t.block_k
    return ((0, first_masked, False), (first_masked, stop, True))


def _query_block_ranges(t, kv_block):
    """Query blocks key block `kv_block` receives gradient from, as (start, stop, masked) ranges.

    Causal: query blocks wholly above the diagonal are skipped; those whose first query is at or
    after the block's last key need no mask. Padded keys need no mask here: they are this
    program's own rows, and their dK, dV are cut off.
    """
    start = lax.div(kv_block * t.block_k, t.block_q) if t.causal else 0
    if not (t.causal or t.has_segments):
        return ((start, t.num_q_blocks, False),)
    if t.has_segments:
        first_unmasked = t.num_q_blocks
    else:
        first_unmasked = jnp.minimum(_cdiv((kv_block + 1) * t.block_k - 1, t.block_q), t.num_q_blocks)
    return ((start, first_unmasked, True), (first_unmasked, t.num_q_blocks, False))


def _fold_blocks(visit, ranges, carry):
    """Folds visit(block, carry, masked) over consecutive (start, stop, masked) block ranges."""
    for start, stop, masked in ranges:
        carry = lax.fori_loop(start, stop, functools.partial(visit, masked=masked), carry)
    return carry


def _visible(t, q_pos, kv_pos, q_ids, kv_ids):
    """Which (query, key) pairs of a block are visible: key inside the sequence, not in the future
    (causal), same segment. Positions and ids broadcast against each other."""
    conditions = []
    if t.keys_padded:
        conditions.append(kv_pos < t.kv_len)
    if t.causal:
        conditions.append(q_pos >= kv_pos)
    if t.has_segments:
        conditions.append(q_ids == kv_ids)
    return functools.reduce(jnp.logical_and, conditions)


def _positions(block, block_size, shape, axis):
    """Sequence positions of a block's entries along `axis` of a 2-D tile of `shape`."""
    return block * block_size + lax.broadcasted_iota(jnp.int32, shape, axis)


def _row_of_ids(segment_refs, block):
    """Segment ids [1, block] of the looped-over side's block `block`, or None without segments."""
    return segment_refs[1][pl.ds(block, 1), :] if segment_refs else None


def _probabilities(products, lse, visible, t):
    """P = exp(scale · q·k − L) = 2^(exp2_scale · q·k − log₂e · L), exactly 0 where the key is not
    visible (also for rows with L = −inf)."""
    probs = jnp.exp2(t.exp2_scale * products - LOG2_E * lse)
    return probs if visible is None else jnp.where(visible, probs, 0.0)


def _finite_or_zero(row_max):
    """The softmax shift: the running maximum, or 0 while a row has seen no visible key."""
    return jnp.where(row_max == -jnp.inf, 0.0, row_max)


def _block_slice(block, size):
    return pl.ds(pl.multiple_of(block * size, size), size)


def _cdiv(a, b):
    return lax.div(a + b - 1, b)


def _matmul(a, b):
    """a b with float32 accumulation."""
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _matmul_nt(a, b):
    """a bᵀ with float32 accumulation."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
