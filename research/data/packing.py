"""Packing tokenized documents into fixed-length language-model rows.

Chunks: a document of n tokens t_0 .. t_{n-1} holds n - 1 next-token pairs
(t_i -> t_{i+1}). They are cut into chunks of at most `seq_len` consecutive pairs:
chunk k has inputs t[k L : e] and targets t[k L + 1 : e + 1], e = min((k+1) L, n-1),
L = seq_len. A document of up to L + 1 tokens is one chunk; the chunks' inputs,
concatenated, are t[:-1] and their targets t[1:], so every pair is trained once.

Rows: chunks are placed back to back into rows of `seq_len` by grain's first-fit
packer. Per row: `segment_ids` number its chunks 1, 2, ... (0 on padding),
`positions` count 0, 1, ... from the start of each chunk (a later chunk of a long
document starts again at 0: it sees no earlier context), `weights` is 1.0 on chunk
tokens and 0.0 on padding, and `inputs`/`targets` are 0 (pad) on padding. A
target is always the next token of the same document, so the model only has to
keep attention within a segment.
"""

from typing import Any

import grain
import numpy as np

LM_FIELDS = ("inputs", "targets", "segment_ids", "positions", "weights")


def chunk_table(offsets: np.ndarray, seq_len: int) -> np.ndarray:
    """[num_chunks, 3] int64 rows (document, start, stop) for documents whose tokens
    are tokens[offsets[d]:offsets[d+1]] of a flat array; the chunk's inputs are
    tokens[start:stop], its targets tokens[start+1:stop+1]."""
    offsets = np.asarray(offsets, dtype=np.int64)
    pairs = np.diff(offsets) - 1
    if (pairs < 1).any():
        raise ValueError(f"document {int(np.argmax(pairs < 1))} has fewer than 2 tokens")
    counts = -(-pairs // seq_len)
    document = np.repeat(np.arange(len(pairs)), counts)
    first_chunk = np.repeat(np.cumsum(counts) - counts, counts)
    start = offsets[document] + (np.arange(len(document)) - first_chunk) * seq_len
    stop = np.minimum(start + seq_len, offsets[document] + pairs[document])
    return np.stack([document, start, stop], axis=1)


class Chunks:
    """Random access to chunks: `chunks[i]` is {"inputs", "targets"} int32 arrays."""

    def __init__(self, tokens: np.ndarray, table: np.ndarray):
        self._tokens = tokens
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        _, start, stop = self._table[index]
        return {"inputs": self._tokens[start:stop], "targets": self._tokens[start + 1 : stop + 1]}


def lm_row_fields(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Grain's packed {"inputs", "targets", "inputs_segment_ids", "inputs_positions",
    ...} as the LM fields (see the module docstring); chunks that carry their own
    `weights` (e.g. loss on answers only) keep them."""
    segment_ids = packed["inputs_segment_ids"]
    on_chunk = (segment_ids > 0).astype(np.float32)
    return {
        "inputs": packed["inputs"],
        "targets": packed["targets"],
        "segment_ids": segment_ids,
        "positions": packed["inputs_positions"],
        "weights": on_chunk * packed["weights"] if "weights" in packed else on_chunk,
    }


def padding_row(seq_len: int) -> dict[str, np.ndarray]:
    """A row of padding only: every field 0, so it carries no loss."""
    row = {field: np.zeros(seq_len, np.int32) for field in LM_FIELDS}
    row["weights"] = np.zeros(seq_len, np.float32)
    return row


def pack_rows(chunks: grain.IterDataset, seq_len: int, num_bins: int,
              fields: tuple[str, ...] = ("inputs", "targets")) -> grain.IterDataset:
    """Packs a stream of chunks (each with `fields`) first-fit into `num_bins` open rows
    at a time (grain's `FirstFitPackIterDataset`; a chunk that fits none flushes all open
    rows, in order) and returns the rows' LM fields."""
    packed = grain.experimental.FirstFitPackIterDataset(
        chunks, length_struct={field: seq_len for field in fields},
        num_packing_bins=num_bins, shuffle_bins=False,
    )
    return packed.map(lm_row_fields)


class PadRowsIterDataset(grain.IterDataset):
    """Its finite parent's rows, then copies of `row` until the number of rows is a
    multiple of `multiple` and at least `min_rows`."""

    def __init__(self, parent: grain.IterDataset, *, row: dict[str, np.ndarray], multiple: int,
                 min_rows: int = 0):
        super().__init__(parent)
        self._row, self._multiple, self._min_rows = row, multiple, min_rows

    def __iter__(self) -> "PadRowsIterator":
        return PadRowsIterator(self._parent.__iter__(), self._row, self._multiple, self._min_rows)


class PadRowsIterator(grain.DatasetIterator):
    """Iterator of `PadRowsIterDataset`; its state is the parent's and the count of
    rows emitted."""

    def __init__(self, parent: grain.DatasetIterator, row: dict[str, np.ndarray], multiple: int,
                 min_rows: int):
        super().__init__(parent)
        self._row, self._multiple, self._min_rows = row, multiple, min_rows
        self._emitted = 0

    def __next__(self):
        try:
            row = next(self._parent)
        except StopIteration:
            if self._emitted >= self._min_rows and self._emitted % self._multiple == 0:
                raise
            row = {field: value.copy() for field, value in self._row.items()}
        self._emitted += 1
        return row

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "emitted": self._emitted}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._emitted = state["emitted"]
