"""Bytes one chip sends over the interconnect in a compiled program, read from its HLO text.

Ring algorithms over a group of p chips, N the bytes of one chip's whole buffer:

    all-gather          (p − 1)/p · N     N = the gathered result
    reduce-scatter      (p − 1)/p · N     N = the operand (each chip keeps N/p)
    all-reduce          2(p − 1)/p · N    a reduce-scatter, then an all-gather
    all-to-all          (p − 1)/p · N     each chip keeps 1/p of its buffer
    collective-permute  N                 each source sends its whole operand

(the counts of research/parallel/collectives.py's rings). The TPU compiler writes a reduce-scatter
as a fusion calling a computation named `all-reduce-scatter…`, an all-reduce followed by each
chip's slice: that all-reduce counts as a reduce-scatter. A tuple-shaped collective (several
buffers combined) counts every buffer; asynchronous `…-start` forms count as their plain ones. Each instruction counts once where it stands in the text, so
a collective inside a loop body counts once per program, as XLA's cost analysis counts FLOPs
(research/tools/aot.py scales both to the whole step).

The group size p comes from `replica_groups`: explicit (`{{0,1,2,3},{4,5,6,7}}`), iota
(`[2,4]<=[8]`: 2 groups of 4) or over the mesh (`mesh['axis_0'=4,'axis_1'=2] {'axis_0'}`, with the
devices' order maybe given between them as `, device_ids=([2,4]T(1,0))`: the
product of the named axes' sizes).
"""

import math
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
BYTES_PER_ELEMENT = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2, "s16": 2,
                     "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
REDUCE_SCATTER_COMPUTATION = "all-reduce-scatter"

_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (.+?) (" + "|".join(KINDS) + r")(-start)?\(")
_ARRAY = re.compile(r"\b(\w+)\[([\d,]*)\]")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[[\d,]*\](?:T\([\d,]*\))?\))? "
                          r"\{([^}]*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[[\d,]*?(\d+)\]<=")
_EXPLICIT_GROUPS = re.compile(r"replica_groups=\{\{([\d,]*)\}")


def buffer_bytes(shape: str) -> list[int]:
    """Bytes of each array of an HLO result shape: `bf16[4,128]{1,0:T(8,128)}` or a tuple of them."""
    sizes = []
    for dtype, dims in _ARRAY.findall(shape):
        if dtype not in BYTES_PER_ELEMENT:
            raise ValueError(f"HLO shape {shape!r}: unknown element type {dtype!r}")
        sizes.append(BYTES_PER_ELEMENT[dtype] * math.prod(int(d) for d in dims.split(",") if d))
    return sizes


def moved_buffers(kind: str, shape: str, asynchronous: bool) -> int:
    """Bytes of the buffers N a collective works on, from its result shape. An asynchronous
    `all-gather-start` or `collective-permute-start` returns (operands, outputs, scalar context):
    its outputs count; an `all-reduce-start` returns its outputs alone."""
    sizes = buffer_bytes(shape)
    if asynchronous and kind != "all-reduce":
        arrays = [size for size, dims in zip(sizes, _ARRAY.findall(shape)) if dims[1]]  # no scalar context
        sizes = arrays[len(arrays) // 2:]
    return sum(sizes)


def group_size(instruction: str) -> int:
    """Chips in each replica group of a collective instruction (module docstring)."""
    if match := _MESH_GROUPS.search(instruction):
        sizes = {name: int(size) for name, size in re.findall(r"'(\w+)'=(\d+)", match.group(1))}
        return math.prod(sizes[name] for name in re.findall(r"'(\w+)'", match.group(2)))
    if match := _IOTA_GROUPS.search(instruction):
        return int(match.group(1))
    if match := _EXPLICIT_GROUPS.search(instruction):
        return len(match.group(1).split(","))
    raise ValueError(f"cannot read the replica groups of HLO instruction {instruction[:200]!r}")


def sent_bytes(kind: str, nbytes: int, group: int) -> float:
    """Bytes one chip sends for one collective of `kind` on a buffer of `nbytes` over `group` chips
    (a collective-permute sends its buffer whatever the group)."""
    if kind == "collective-permute":
        return float(nbytes)
    share = (group - 1) / group
    return (2 * share if kind == "all-reduce" else share) * nbytes


def collective_bytes(hlo_text: str) -> dict[str, float]:
    """Bytes one chip sends per kind of collective (KINDS) in the compiled HLO module `hlo_text`."""
    sent = dict.fromkeys(KINDS, 0.0)
    computation = ""
    for line in hlo_text.splitlines():
        if header := _COMPUTATION.match(line):
            computation = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        shape, kind, start = match.groups()
        group = 1 if kind == "collective-permute" else group_size(line)
        buffers = moved_buffers(kind, shape, bool(start))
        if kind == "reduce-scatter":
            buffers *= group  # the result is each chip's 1/p of the operand
        elif kind == "all-reduce" and computation.startswith(REDUCE_SCATTER_COMPUTATION):
            kind = "reduce-scatter"  # the all-reduce's result is the whole operand; each chip keeps its slice
        sent[kind] += sent_bytes(kind, buffers, group)
    return sent
