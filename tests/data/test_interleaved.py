"""research/data/interleaved.py: documents are text, an image, text in the unified vocabulary, their
prompts end where generation starts, bad spans and ids are named, and packed rows are deterministic."""

import types

import numpy as np
import pytest

from research.data.interleaved import (box_text, check_image_ids, document_ids, interleaved_documents,
                                       make_interleaved_batches, prompt_ids)
from research.data.scenes import scene
from research.data.tokenizer import ByteTokenizer

VOCAB = types.SimpleNamespace(image_token_offset=512, num_image_codes=512, begin_image_id=510, end_image_id=511,
                              image_seq_len=64, vocab_size=1024)
TEXT = ByteTokenizer(vocab_size=265)


def image_of(index: int) -> np.ndarray:
    return (512 + (np.arange(64) * 7 + index) % 512).astype(np.int32)


def test_each_kind_is_prompt_then_completion_with_one_image_span():
    record = scene("train", 0)
    for kind in ("caption", "draw", "boxes"):
        ids = document_ids(kind, record, image_of(0), TEXT, VOCAB)
        prompt = prompt_ids(kind, record, image_of(0), TEXT, VOCAB)
        assert ids[:len(prompt)].tolist() == prompt and ids[0] == TEXT.bos_id and ids[-1] == TEXT.eos_id
        begin, end = int(np.flatnonzero(ids == 510)[0]), int(np.flatnonzero(ids == 511)[0])
        assert ids[begin + 1:end].tolist() == image_of(0).tolist()
        codes = (ids >= 512).sum()
        assert codes == 64  # no image code outside the span
        text = np.concatenate([ids[:begin], ids[end + 1:]])
        assert (text < 265).all()
    for kind, expected in (("caption", record.caption), ("boxes", box_text(record))):
        ids = document_ids(kind, record, image_of(0), TEXT, VOCAB)
        assert TEXT.decode(ids[int(np.flatnonzero(ids == 511)[0]) + 1:]).strip() == expected


def test_box_text_lists_category_and_coco_box_of_every_object():
    record = scene("train", 3)
    entries = box_text(record).split("; ")
    assert len(entries) == len(record.categories)
    for entry, category, box in zip(entries, record.categories, record.boxes):
        assert entry == f"{category} {box[0]} {box[1]} {box[2]} {box[3]}"


def test_an_image_span_of_the_wrong_length_or_with_a_text_id_is_named():
    with pytest.raises(ValueError, match="image span of 63 tokens.*image_seq_len = 64"):
        check_image_ids(image_of(0)[:63], VOCAB)
    with pytest.raises(ValueError, match="image token id 42 is not an image code"):
        check_image_ids(np.r_[image_of(0)[:63], 42], VOCAB)
    with pytest.raises(ValueError, match="image token id 1024 is not an image code"):
        check_image_ids(np.r_[image_of(0)[:63], 1024], VOCAB)


def test_text_ids_that_reach_the_image_codes_are_refused():
    with pytest.raises(ValueError, match="data.vocab_size.*overlap the image codes"):
        interleaved_documents([scene("train", 0)], [image_of(0)], ByteTokenizer(vocab_size=600), VOCAB)


def test_a_document_longer_than_a_row_is_refused_not_cut():
    documents = interleaved_documents([scene("train", 0)], [image_of(0)], TEXT, VOCAB)
    with pytest.raises(ValueError, match="more than train.seq_len"):
        next(make_interleaved_batches(documents, batch_size=2, seq_len=64, seed=0))


def test_rows_are_packed_with_segments_and_repeat_exactly_for_a_seed():
    records = [scene("train", i) for i in range(6)]
    documents = interleaved_documents(records, [image_of(i) for i in range(6)], TEXT, VOCAB)
    assert len(documents) == 18
    first = next(make_interleaved_batches(documents, batch_size=4, seq_len=256, seed=1))
    again = next(make_interleaved_batches(documents, batch_size=4, seq_len=256, seed=1))
    other = next(make_interleaved_batches(documents, batch_size=4, seq_len=256, seed=2))
    for field in first:
        np.testing.assert_array_equal(first[field], again[field])
    assert not np.array_equal(first["inputs"], other["inputs"])
    assert first["inputs"].shape == (4, 256) and first["segment_ids"].max() >= 2  # two documents share a row
    real = first["weights"] > 0
    np.testing.assert_array_equal(real, first["segment_ids"] > 0)
    starts = (first["positions"] == 0) & real
    assert (first["inputs"][starts] == TEXT.bos_id).all()  # every segment is a whole document
