"""Batches of images for training and evaluation: records → pixels in [-1, 1] → fixed-size batches.

`image_batches` yields `{"images": float32 [batch_size, H, W, C]}`, pixel value v ↦ v / 127.5 − 1.
Training streams are shuffled with `seed`, afresh each epoch (grain's `MapDataset.shuffle` +
`repeat`), forever; evaluation streams (`num_epochs` set) keep the split's order. Process p of P
takes the records at positions p, p + P, ... of the stream, and a last partial batch is dropped, so
every batch has the same shape. The iterator's `get_state()` is JSON-serialisable and `set_state`
on a fresh iterator built with the same arguments continues with exactly the batches the original
would have produced.
"""

from collections.abc import Sequence

import grain
import numpy as np

from research.data.scenes import ImageRecord


def to_pixels(record: ImageRecord) -> np.ndarray:
    """uint8 [H, W, C] → float32 in [-1, 1]."""
    return record.image.astype(np.float32) / 127.5 - 1.0


def image_batches(records: Sequence[ImageRecord], *, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, num_epochs: int | None = None) -> grain.DatasetIterator:
    """A resumable iterator of `{"images": [batch_size, H, W, C]}` batches of this process's share of
    `records`: shuffled for ever when `num_epochs` is None, else in order for `num_epochs` epochs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
    if len(records) < batch_size * process_count:
        raise ValueError(f"{len(records)} records make no batch of {batch_size} rows on each of {process_count} "
                         "processes")
    dataset = grain.MapDataset.source(records)
    if num_epochs is None:
        dataset = dataset.shuffle(seed)
    dataset = dataset.repeat(num_epochs)[process_index::process_count].map(lambda r: {"images": to_pixels(r)})
    batches = dataset.batch(batch_size, drop_remainder=True)
    return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
