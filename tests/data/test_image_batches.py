"""research/data/image_batches.py: pixels in [-1, 1], resumable training streams, ordered eval streams,
disjoint process shares."""

import numpy as np
import pytest

from research.data import scenes
from research.data.image_batches import image_batches, to_pixels

RECORDS = [scenes.scene("validation", i) for i in range(10)]


def test_a_restored_iterator_continues_with_the_same_batches_across_epochs():
    stream = image_batches(RECORDS, batch_size=3, seed=7)
    for _ in range(4):
        next(stream)
    state = stream.get_state()
    expected = [next(stream)["images"] for _ in range(5)]
    resumed = image_batches(RECORDS, batch_size=3, seed=7)
    resumed.set_state(state)
    for batch in expected:
        np.testing.assert_array_equal(next(resumed)["images"], batch)


def test_an_eval_stream_keeps_the_split_order_and_drops_the_partial_batch():
    batches = list(image_batches(RECORDS, batch_size=4, seed=0, num_epochs=1))
    assert len(batches) == 2
    images = np.concatenate([batch["images"] for batch in batches])
    np.testing.assert_array_equal(images, np.stack([to_pixels(r) for r in RECORDS[:8]]))
    assert images.dtype == np.float32 and images.min() >= -1 and images.max() <= 1


def test_processes_take_disjoint_shares():
    shares = [np.concatenate([b["images"] for b in image_batches(RECORDS, batch_size=2, seed=0, process_index=p,
                                                                 process_count=2, num_epochs=1)])
              for p in range(2)]
    np.testing.assert_array_equal(shares[0], np.stack([to_pixels(r) for r in RECORDS[0:8:2]]))
    np.testing.assert_array_equal(shares[1], np.stack([to_pixels(r) for r in RECORDS[1:9:2]]))


def test_too_few_records_for_a_batch_are_named():
    with pytest.raises(ValueError, match="10 records make no batch of 6 rows on each of 2 processes"):
        image_batches(RECORDS, batch_size=6, seed=0, process_count=2, process_index=0)
