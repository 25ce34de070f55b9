"""research/data/pipeline.py and packing.py: packed, sharded, resumable LM batches."""

import collections
import itertools
import json

import numpy as np
import pytest

from research.data import corpus, packing, pipeline, tokenizer

SEQ_LEN = 64
BYTE = tokenizer.ByteTokenizer()


def batches(config, *, split="validation", batch_size=4, seed=0, **kwargs):
    return pipeline.make_lm_batches(
        config, BYTE, split=split, batch_size=batch_size, seq_len=SEQ_LEN, seed=seed, **kwargs
    )


def rows(batch_list):
    for batch in batch_list:
        for index in range(len(batch["inputs"])):
            yield {field: values[index] for field, values in batch.items()}


def segments(batch_list) -> list[tuple[int, ...]]:
    """Each packed chunk as its tokens: its inputs followed by its last target."""
    found = []
    for row in rows(batch_list):
        for segment_id in range(1, row["segment_ids"].max() + 1):
            where = row["segment_ids"] == segment_id
            found.append(tuple(row["inputs"][where]) + (row["targets"][where][-1],))
    return found


def expected_chunks(config, split="validation", shard=0, shard_count=1) -> collections.Counter:
    documents = pipeline.tokenized_documents(
        corpus.resolve_data_dir(config.data_dir), config.name, split, BYTE)
    table = packing.chunk_table(documents.offsets, SEQ_LEN)
    return collections.Counter(
        tuple(documents.tokens[start : stop + 1])
        for document, start, stop in table if document % shard_count == shard
    )


def assert_batches_equal(expected, actual):
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        assert want.keys() == got.keys()
        for field in want:
            np.testing.assert_array_equal(want[field], got[field], err_msg=field)


def test_chunks_of_a_document_concatenate_back_to_its_tokens():
    lengths = [2, 5, 9, 10, 11, 30]
    offsets = np.cumsum([0] + lengths)
    tokens = np.arange(offsets[-1]) + 1000
    table = packing.chunk_table(offsets, seq_len=4)
    for document, length in enumerate(lengths):
        mine = table[table[:, 0] == document]
        assert (mine[:, 2] - mine[:, 1] <= 4).all() and (mine[:-1, 2] - mine[:-1, 1] == 4).all()
        doc_tokens = tokens[offsets[document] : offsets[document + 1]]
        inputs = np.concatenate([tokens[start:stop] for _, start, stop in mine])
        targets = np.concatenate([tokens[start + 1 : stop + 1] for _, start, stop in mine])
        np.testing.assert_array_equal(inputs, doc_tokens[:-1])
        np.testing.assert_array_equal(targets, doc_tokens[1:])
    with pytest.raises(ValueError, match="document 1 has fewer than 2 tokens"):
        packing.chunk_table(np.array([0, 3, 4]), seq_len=4)


def test_rows_are_consistent_and_no_target_crosses_a_document(byte_config):
    taken = list(itertools.islice(batches(byte_config, split="train", batch_size=8), 12))
    for batch in taken:
        assert {field: (value.dtype, value.shape) for field, value in batch.items()} == {
            "inputs": (np.int32, (8, SEQ_LEN)), "targets": (np.int32, (8, SEQ_LEN)),
            "segment_ids": (np.int32, (8, SEQ_LEN)), "positions": (np.int32, (8, SEQ_LEN)),
            "weights": (np.float32, (8, SEQ_LEN)),
        }
    for row in rows(taken):
        ids, positions = row["segment_ids"], row["positions"]
        used = ids > 0
        assert used.any() and (used[:-1] >= used[1:]).all()  # chunks first, padding last
        np.testing.assert_array_equal(np.diff(ids[used]) >= 0, True)
        np.testing.assert_array_equal(np.unique(ids[used]), np.arange(1, ids.max() + 1))
        for segment_id in range(1, ids.max() + 1):
            where = ids == segment_id
            np.testing.assert_array_equal(positions[where], np.arange(where.sum()))
            # inside a chunk each target is the next input: one document, in order
            np.testing.assert_array_equal(row["targets"][where][:-1], row["inputs"][where][1:])
        np.testing.assert_array_equal(row["weights"], used.astype(np.float32))
        for field in ("inputs", "targets", "positions"):
            assert not row[field][~used].any()
        assert (row["inputs"][used] != BYTE.eos_id).all()  # eos is only ever a target
        assert (row["targets"][used] != BYTE.bos_id).all()  # bos is only ever an input


def test_an_eval_epoch_covers_every_chunk_once_then_stops(byte_config):
    evaluated = list(batches(byte_config, num_epochs=1))
    assert all(batch["inputs"].shape == (4, SEQ_LEN) for batch in evaluated)
    expected = expected_chunks(byte_config)
    assert collections.Counter(segments(evaluated)) == expected
    assert sum(batch["weights"].sum() for batch in evaluated) == sum(
        (len(chunk) - 1) * count for chunk, count in expected.items())
    documents = len(corpus.data_source("pydoc_topics", "validation", byte_config.data_dir))
    assert sum(chunk[0] == BYTE.bos_id for chunk in segments(evaluated)) == documents
    assert not evaluated[-1]["weights"][-1].any()  # the last batch is padded with empty rows


def test_same_seed_gives_the_same_batches_and_another_seed_others(byte_config):
    def first(seed):
        return list(itertools.islice(batches(byte_config, split="train", seed=seed), 5))

    assert_batches_equal(first(7), first(7))
    assert not np.array_equal(first(7)[0]["inputs"], first(8)[0]["inputs"])


def test_each_epoch_is_shuffled_afresh(byte_config):
    one_epoch = segments(list(batches(byte_config, num_epochs=1)))
    two_epochs = segments(list(batches(byte_config, num_epochs=2)))
    assert collections.Counter(two_epochs) == collections.Counter(one_epoch * 2)
    half = len(one_epoch) // 2
    shared = collections.Counter(two_epochs[:half]) & collections.Counter(
        two_epochs[len(one_epoch) : len(one_epoch) + half])
    assert sum(shared.values()) < 0.75 * half


@pytest.mark.parametrize("split, num_epochs, where", [
    ("train", None, "mid-stream"),
    ("validation", None, "past the first epoch"),
    ("validation", 1, "before the padded end"),
])
def test_resuming_from_a_json_state_continues_bitwise(byte_config, split, num_epochs, where):
    def fresh():
        return batches(byte_config, split=split, num_epochs=num_epochs, seed=3)

    epoch = len(list(batches(byte_config, num_epochs=1, seed=3)))
    taken = {"mid-stream": 3, "past the first epoch": epoch + 2, "before the padded end": epoch - 4}[where]
    uninterrupted = list(itertools.islice(fresh(), taken + 4))
    interrupted = fresh()
    assert_batches_equal(uninterrupted[:taken], list(itertools.islice(interrupted, taken)))
    state = json.loads(json.dumps(interrupted.get_state()))
    resumed = fresh()
    resumed.set_state(state)
    assert_batches_equal(uninterrupted[taken:], list(itertools.islice(resumed, 4)))


def test_processes_get_disjoint_shards_and_the_same_number_of_eval_batches(byte_config):
    per_process = [list(batches(byte_config, num_epochs=1, process_index=index, process_count=3))
                   for index in range(3)]
    assert len({len(batch_list) for batch_list in per_process}) == 1
    for index, batch_list in enumerate(per_process):
        assert collections.Counter(segments(batch_list)) == expected_chunks(byte_config, shard=index, shard_count=3)
    chunk_sets = [set(segments(batch_list)) for batch_list in per_process]
    assert all(not chunk_sets[a] & chunk_sets[b] for a, b in itertools.combinations(range(3), 2))
    train_heads = [set(segments(itertools.islice(batches(
        byte_config, split="train", process_index=index, process_count=2), 3))) for index in range(2)]
    assert not train_heads[0] & train_heads[1]


def test_sentencepiece_batches_decode_to_corpus_text(sentencepiece_config, data_dir):
    sp = tokenizer.get_tokenizer(sentencepiece_config)
    batch = next(pipeline.make_lm_batches(
        sentencepiece_config, sp, split="validation", batch_size=2, seq_len=128, seed=0))
    assert 0 < batch["inputs"].max() < sp.vocab_size
    row = batch["segment_ids"][0] == 1
    text = sp.decode(batch["inputs"][0][row])
    corpus_text = "".join(e["text"] for e in corpus.data_source("pydoc_topics", "validation", data_dir))
    assert len(text) > 20 and text in corpus_text


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(seed=-1), r"seed must be in \[0, 2\*\*32\)"),
    (dict(process_index=2, process_count=2), r"process_index 2 is not in \[0, process_count=2\)"),
    (dict(num_epochs=0), "num_epochs must be None"),
    (dict(process_count=100, process_index=0), r"has \d+ documents, fewer than process_count=100"),
])
def test_bad_arguments_raise_naming_the_problem(byte_config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        batches(byte_config, **kwargs)
