"""research/data/tokenizer.py: byte and SentencePiece tokenizers."""

import os

import ml_collections
import numpy as np
import pytest

from research.data import corpus, tokenizer

ODD_TEXTS = [
    "",
    "plain ascii",
    "  leading and trailing spaces  ",
    "def f(x):\n\treturn {'a': x}  # tabs\r\n\n\n",
    "ünïcödé, 中文, emoji 🙂🐍, a NUL \x00 and a bell \x07",
]


@pytest.fixture(scope="module")
def sentencepiece_512(sentencepiece_config):
    return tokenizer.get_tokenizer(sentencepiece_config)


def test_byte_tokenizer_maps_utf8_bytes_after_the_specials():
    byte = tokenizer.ByteTokenizer()
    assert (byte.vocab_size, byte.pad_id, byte.bos_id, byte.eos_id) == (259, 0, 1, 2)
    assert byte.encode("Aé") == [ord("A") + 3, 0xC3 + 3, 0xA9 + 3]
    for text in ODD_TEXTS:
        assert byte.decode(byte.encode(text)) == text
    assert byte.decode([1, ord("h") + 3, 0, ord("i") + 3, 2]) == "hi"


def test_byte_tokenizer_vocabulary_can_be_padded_but_not_shrunk():
    padded = tokenizer.ByteTokenizer(vocab_size=4096)
    assert padded.decode([ord("a") + 3, 300, 4095]) == "a"  # padding ids decode to nothing
    with pytest.raises(ValueError, match="vocab_size >= 259"):
        tokenizer.ByteTokenizer(vocab_size=100)


@pytest.mark.parametrize("bad_id", [-1, 259, 10**6])
def test_byte_decode_rejects_ids_outside_the_vocabulary(bad_id):
    with pytest.raises(ValueError, match=f"token id {bad_id} is outside the vocabulary"):
        tokenizer.ByteTokenizer().decode([5, bad_id])


def test_sentencepiece_round_trips_any_text(sentencepiece_512, data_dir):
    sp = sentencepiece_512
    assert (sp.vocab_size, sp.pad_id, sp.bos_id, sp.eos_id) == (512, 0, 1, 2)
    validation = [example["text"] for example in corpus.data_source("pydoc_topics", "validation", data_dir)]
    with open(os.__file__, encoding="utf-8") as source_file:
        python_source = source_file.read()
    for text in ODD_TEXTS + validation + [python_source]:
        ids = sp.encode(text)
        assert all(0 <= i < 512 for i in ids) and not {0, 1, 2} & set(ids)
        assert sp.decode(ids) == text
    english = "\n".join(validation)
    assert len(sp.encode(english)) < 0.6 * len(english.encode())  # it learned merges


def test_sentencepiece_decode_skips_specials_and_rejects_unknown_ids(sentencepiece_512):
    sp = sentencepiece_512
    ids = sp.encode("lambda")
    assert sp.decode([sp.bos_id, *ids, sp.eos_id, sp.pad_id]) == "lambda"
    with pytest.raises(ValueError, match="token id 512 is outside the vocabulary"):
        sp.decode(ids + [512])


def test_sentencepiece_is_cached_and_training_is_deterministic(sentencepiece_512, sentencepiece_config, data_dir):
    path = tokenizer.sentencepiece_path(data_dir, "pydoc_topics", 512)
    assert path == os.path.join(data_dir, "tokenizers", "pydoc_topics_bpe512.model")
    modified = os.stat(path).st_mtime_ns
    assert tokenizer.get_tokenizer(sentencepiece_config) == sentencepiece_512
    assert os.stat(path).st_mtime_ns == modified
    texts = [example["text"] for example in corpus.data_source("pydoc_topics", "train", data_dir)]
    assert tokenizer.train_sentencepiece(texts, 512) == sentencepiece_512.model_proto


def test_a_corrupt_cached_model_raises_naming_it(tmp_path):
    path = tokenizer.sentencepiece_path(str(tmp_path), "pydoc_topics", 600)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as model_file:
        model_file.write(b"not a model")
    config = ml_collections.ConfigDict(dict(
        name="pydoc_topics", data_dir=str(tmp_path), tokenizer="sentencepiece", vocab_size=600))
    with pytest.raises(RuntimeError, match=f"{path}.*broken"):
        tokenizer.get_tokenizer(config)


def test_a_vocabulary_the_corpus_cannot_fill_raises():
    with pytest.raises(ValueError, match="cannot train a 20000-token"):
        tokenizer.train_sentencepiece(["a small corpus", "of two lines"], 20000)


def test_get_tokenizer_builds_what_the_config_names(byte_config):
    assert tokenizer.get_tokenizer(byte_config) == tokenizer.ByteTokenizer()
    wide = ml_collections.ConfigDict(dict(byte_config, vocab_size=4096))
    assert tokenizer.get_tokenizer(wide).vocab_size == 4096
    with pytest.raises(ValueError, match="unknown data.tokenizer 'wordpiece'"):
        tokenizer.get_tokenizer(ml_collections.ConfigDict(dict(byte_config, tokenizer="wordpiece")))


def test_check_ids_accepts_arrays_and_rejects_non_integer_input():
    assert tokenizer.check_ids(np.array([3, 4], np.int32), 10) == [3, 4]
    with pytest.raises(ValueError, match="1-D sequence of integer"):
        tokenizer.check_ids([[3, 4]], 10)
    with pytest.raises(ValueError, match="1-D sequence of integer"):
        tokenizer.check_ids([3.5], 10)
