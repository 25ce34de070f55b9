"""The language-modelling input pipeline: corpus -> tokens -> packed, sharded batches.

`make_lm_batches` yields dicts of NumPy arrays, all [batch_size, seq_len]:
`inputs`, `targets` (int32, the next token of the same document), `segment_ids`,
`positions` (int32) and `weights` (float32), laid out as `packing` describes.

Order of operations, all deterministic given the arguments:
1. every document of the split becomes [bos] + encode(text) + [eos] (cached per
   corpus, split and tokenizer for the life of the process);
2. documents d with d % process_count == process_index form this process' shard;
3. the shard's chunks (`packing.chunk_table`) are shuffled with `seed`, afresh each
   epoch (grain's `MapDataset.shuffle` + `repeat`), for `num_epochs` epochs or
   forever;
4. chunks are packed first-fit into rows and rows are batched.

A finite iterator (`num_epochs` set) ends with padding rows (weights 0) so that its
last batch is full and every process yields the same number of batches: the
largest shard's. The iterator's `get_state()` is a JSON-serialisable dict, and
`set_state(state)` on a fresh iterator built with the same arguments continues with
exactly the batches the original would have produced.
"""

import functools
from typing import NamedTuple

import grain
import ml_collections
import numpy as np

from research.data import corpus, packing

MIN_PACKING_BINS = 32  # open rows the packer fills at once (more bins, less padding)
MAX_SEED = 2**32


class Documents(NamedTuple):
    """Document d's tokens are tokens[offsets[d]:offsets[d + 1]] (both read-only)."""

    tokens: np.ndarray  # int32 [total_tokens]
    offsets: np.ndarray  # int64 [num_documents + 1]


@functools.lru_cache(maxsize=8)
def tokenized_documents(data_dir: str, name: str, split: str, tokenizer) -> Documents:
    """Every document of `split` of corpus `name` as [bos] + encode(text) + [eos]."""
    bos, eos = np.array([tokenizer.bos_id], np.int32), np.array([tokenizer.eos_id], np.int32)
    documents = [
        np.concatenate([bos, np.asarray(tokenizer.encode(example["text"]), np.int32), eos])
        for example in corpus.data_source(name, split, data_dir)
    ]
    offsets = np.cumsum([0] + [len(document) for document in documents], dtype=np.int64)
    tokens = np.concatenate(documents)
    tokens.flags.writeable = offsets.flags.writeable = False
    return Documents(tokens, offsets)


def make_lm_batches(
    data_config: ml_collections.ConfigDict,
    tokenizer,
    *,
    split: str,
    batch_size: int,
    seq_len: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
) -> grain.DatasetIterator:
    """A resumable iterator of packed LM batches of `split` of corpus
    `data_config.name` (in `data_config.data_dir`, None: the default data dir) for
    process `process_index` of `process_count`; `batch_size` rows per process."""
    _check_arguments(batch_size, seq_len, seed, process_index, process_count, num_epochs)
    data_dir = corpus.resolve_data_dir(data_config.data_dir)
    documents = tokenized_documents(data_dir, data_config.name, split, tokenizer)
    table = packing.chunk_table(documents.offsets, seq_len)
    num_documents = len(documents.offsets) - 1
    if num_documents < process_count:
        raise ValueError(
            f"split {split!r} of corpus {data_config.name!r} has {num_documents} documents, "
            f"fewer than process_count={process_count}"
        )

    def shard_rows(shard: int) -> grain.IterDataset:
        chunks = packing.Chunks(documents.tokens, table[table[:, 0] % process_count == shard])
        ordered = grain.MapDataset.source(chunks).shuffle(seed).repeat(num_epochs)
        stream = ordered.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        return packing.pack_rows(stream, seq_len, max(batch_size, MIN_PACKING_BINS))

    rows = shard_rows(process_index)
    if num_epochs is not None:
        # Every process must run the same number of (jitted, collective) eval steps.
        most_rows = 0 if process_count == 1 else max(
            _round_up(sum(1 for _ in shard_rows(shard)), batch_size) for shard in range(process_count)
        )
        rows = packing.PadRowsIterDataset(
            rows, row=packing.padding_row(seq_len), multiple=batch_size, min_rows=most_rows
        )
    return iter(rows.batch(batch_size))


def _round_up(count: int, multiple: int) -> int:
    return -(-count // multiple) * multiple


def _check_arguments(batch_size, seq_len, seed, process_index, process_count, num_epochs) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
