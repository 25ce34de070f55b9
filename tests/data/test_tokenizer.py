"""research/data/tokenizer.py: byte and SentencePiece tokenizers."""

import io
import os

import ml_collections
import numpy as np
import pytest
import sentencepiece

from research.data import corpus, tokenizer

ODD_TEXTS = [
    "",
    "plain ascii",
    "  leading and trailing spaces  ",
    "def f(x):\n\treturn {'a': x}  # tabs\r\n\n\n",
    "ünïcödé, 中文, emoji 🙂🐍, a NUL \x00 and a bell \x07",
]
TEMPLATE = "<|system|>Be brief.<|end|>\n<|user|>2+2=?<|end|>\n<|assistant|><think> 2+2 is 4 </think>\n4<|end|>"
RESERVED_ATTRIBUTES = ("think_id", "end_think_id", "system_id", "user_id", "assistant_id", "end_of_turn_id")


@pytest.fixture(scope="module")
def sentencepiece_512(sentencepiece_config):
    return tokenizer.get_tokenizer(sentencepiece_config)


def test_byte_tokenizer_maps_utf8_bytes_after_the_specials():
    byte = tokenizer.ByteTokenizer()
    assert (byte.vocab_size, byte.pad_id, byte.bos_id, byte.eos_id) == (265, 0, 1, 2)
    assert byte.encode("Aé") == [ord("A") + 3, 0xC3 + 3, 0xA9 + 3]
    for text in ODD_TEXTS:
        assert byte.decode(byte.encode(text)) == text
    assert byte.decode([1, ord("h") + 3, 0, ord("i") + 3, 2]) == "hi"


def test_byte_tokenizer_vocabulary_can_be_padded_but_not_shrunk():
    padded = tokenizer.ByteTokenizer(vocab_size=4096)
    assert padded.decode([ord("a") + 3, 300, 4095]) == "a"  # padding ids decode to nothing
    with pytest.raises(ValueError, match="vocab_size >= 259"):
        tokenizer.ByteTokenizer(vocab_size=100)


@pytest.mark.parametrize("bad_id", [-1, 265, 10**6])
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
    assert os.path.dirname(path) == os.path.join(data_dir, "tokenizers")
    assert os.path.basename(path).startswith("pydoc_topics_bpe512_reserved-")
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
    assert tokenizer.get_tokenizer(byte_config) == tokenizer.ByteTokenizer(vocab_size=259)
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


def test_byte_tokenizer_puts_the_reserved_tokens_after_the_bytes():
    byte = tokenizer.ByteTokenizer()
    ids = [getattr(byte, name) for name in RESERVED_ATTRIBUTES]
    assert ids == [byte.encode(token)[0] for token in tokenizer.RESERVED_TOKENS] == list(range(259, 265))
    ids = byte.encode(TEMPLATE)
    assert byte.decode(ids) == TEMPLATE
    assert ids[:2] == [byte.system_id, ord("B") + 3] and ids[-1] == byte.end_of_turn_id
    assert byte.encode("<think") == [b + 3 for b in b"<think"]  # a partial tag is plain text
    e_acute = [0xC3 + 3, 0xA9 + 3]
    assert byte.decode([byte.bos_id, byte.think_id, *e_acute, byte.end_think_id, byte.eos_id]) == "<think>é</think>"
    assert tokenizer.ByteTokenizer(vocab_size=4096).encode(TEMPLATE) == ids


@pytest.mark.parametrize("vocab_size", [259, 260, 264])
def test_a_byte_vocabulary_without_room_keeps_the_layout_from_before_the_reserved_tokens(vocab_size):
    byte = tokenizer.ByteTokenizer(vocab_size=vocab_size)
    assert byte.encode("<think>") == [b + 3 for b in b"<think>"]
    assert byte.decode(byte.encode(TEMPLATE)) == TEMPLATE
    assert byte.decode(list(range(259, vocab_size))) == ""  # padding ids, as before
    with pytest.raises(ValueError, match="no id for '<think>'.*vocab_size >= 265"):
        byte.think_id


def test_sentencepiece_reserved_tokens_are_single_user_defined_pieces(sentencepiece_512):
    sp = sentencepiece_512
    ids = [getattr(sp, name) for name in RESERVED_ATTRIBUTES]
    assert ids == list(range(4, 10))  # right after pad, bos, eos, unk
    for token, token_id in zip(tokenizer.RESERVED_TOKENS, ids):
        assert sp.encode(token) == [token_id] and sp.decode([token_id]) == token
    template_ids = sp.encode(TEMPLATE)
    assert sp.decode(template_ids) == TEMPLATE
    assert template_ids.count(sp.end_of_turn_id) == 3 and template_ids[0] == sp.system_id


def _sentencepiece_without_reserved_tokens(texts) -> bytes:
    """A BPE trained like `train_sentencepiece` did before the reserved tokens existed."""
    model = io.BytesIO()
    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=400,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, byte_fallback=True, num_threads=1, minloglevel=2)
    return model.getvalue()


def test_a_sentencepiece_model_without_reserved_tokens_is_rejected_and_not_reused(tmp_path, pydoc_texts):
    old_model = _sentencepiece_without_reserved_tokens(list(pydoc_texts.values())[:20])
    with pytest.raises(ValueError, match="lacks the reserved tokens .*'<think>'.*retrain"):
        tokenizer.SentencePieceTokenizer(old_model)
    old_path = tmp_path / "tokenizers" / "pydoc_topics_bpe400.model"  # the cache name before them
    old_path.parent.mkdir()
    old_path.write_bytes(old_model)
    assert tokenizer.sentencepiece_path(str(tmp_path), "pydoc_topics", 400) != str(old_path)
    with pytest.raises(ValueError, match=f"{old_path}.*lacks the reserved tokens"):
        tokenizer.SentencePieceTokenizer.from_file(str(old_path))
