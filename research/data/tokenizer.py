"""Tokenizers: text <-> token ids, behind one interface.

Every tokenizer has `vocab_size`, `pad_id` (always 0), `bos_id`, `eos_id`,
`encode(text) -> list[int]` (no special tokens added) and `decode(ids) -> str`
(special tokens skipped; an id outside [0, vocab_size) raises ValueError naming it).
Tokenizers compare equal when they encode identically, so they can key caches.

- `ByteTokenizer`: UTF-8 bytes; pad 0, bos 1, eos 2, byte b -> id b + 3
  (vocab_size 259, or larger to pad the vocabulary with unused ids).
- `SentencePieceTokenizer`: SentencePiece BPE (the LLaMA tokenizer family) trained
  offline on a corpus' train split; pad 0, bos 1, eos 2, unk 3, byte fallback, no
  normalisation and no dummy prefix, so `decode(encode(text)) == text` for any text.
"""

import dataclasses
import hashlib
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from typing import ClassVar

import ml_collections
import numpy as np
import sentencepiece

from research.data import corpus

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
TOKENIZERS = ("byte", "sentencepiece")


def check_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    """`ids` (one sequence) as a list of ints; ValueError naming the first id outside
    [0, vocab_size)."""
    array = np.asarray(ids)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"expected a 1-D sequence of integer token ids, got {array.dtype} {array.shape}")
    outside = (array < 0) | (array >= vocab_size)
    if outside.any():
        raise ValueError(f"token id {array[outside][0]} is outside the vocabulary [0, {vocab_size})")
    return array.tolist()


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes shifted by the three special ids: byte b <-> id b + 3.

    Ids from 259 up to `vocab_size` - 1 only pad the vocabulary; `decode` skips them
    like the specials. Byte sequences that are not valid UTF-8 decode to U+FFFD.
    """

    vocab_size: int = 259
    pad_id: ClassVar[int] = PAD_ID
    bos_id: ClassVar[int] = BOS_ID
    eos_id: ClassVar[int] = EOS_ID
    byte_offset: ClassVar[int] = 3

    def __post_init__(self):
        if self.vocab_size < self.byte_offset + 256:
            raise ValueError(
                f"ByteTokenizer needs vocab_size >= {self.byte_offset + 256}, got {self.vocab_size}"
            )

    def encode(self, text: str) -> list[int]:
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        return (data.astype(np.int32) + self.byte_offset).tolist()

    def decode(self, ids: Sequence[int]) -> str:
        ids = np.asarray(check_ids(ids, self.vocab_size), dtype=np.int64)
        is_byte = (ids >= self.byte_offset) & (ids < self.byte_offset + 256)
        data = (ids[is_byte] - self.byte_offset).astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """A SentencePiece model given as its serialised `ModelProto` bytes."""

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._processor.vocab_size()
        self._digest = hashlib.sha256(model_proto).hexdigest()

    @classmethod
    def from_file(cls, path: str) -> "SentencePieceTokenizer":
        """Loads a `.model` file; RuntimeError naming `path` if it is not one."""
        with open(path, "rb") as model_file:
            model_proto = model_file.read()
        try:
            return cls(model_proto)
        except RuntimeError as error:
            raise RuntimeError(
                f"tokenizer model {path!r} is broken ({error}); delete it to retrain"
            ) from error

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._processor.decode(check_ids(ids, self.vocab_size))

    def __eq__(self, other) -> bool:
        return isinstance(other, SentencePieceTokenizer) and self._digest == other._digest

    def __hash__(self) -> int:
        return hash(self._digest)


def train_sentencepiece(texts: Iterable[str], vocab_size: int) -> bytes:
    """Trains a BPE model on the non-blank lines of `texts`; returns its ModelProto.

    Whitespace is kept as is (runs of spaces may form pieces, which suits code);
    characters below 99.95% coverage and newlines are spelled with byte pieces.
    One trainer thread: SentencePiece's result depends on the thread count, and a
    fixed count makes the vocabulary the same on every machine. ValueError if the
    corpus cannot fill `vocab_size`, or `vocab_size` cannot hold its characters.
    """
    lines = (line for text in texts for line in text.split("\n") if line.strip())
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=lines, model_writer=model, model_type="bpe",
            vocab_size=vocab_size, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
            byte_fallback=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, num_threads=1, minloglevel=2,
        )
    except RuntimeError as error:
        raise ValueError(f"cannot train a {vocab_size}-token SentencePiece BPE: {error}") from error
    return model.getvalue()


def sentencepiece_path(data_dir: str, corpus_name: str, vocab_size: int) -> str:
    return os.path.join(data_dir, "tokenizers", f"{corpus_name}_bpe{vocab_size}.model")


def corpus_sentencepiece(corpus_name: str, vocab_size: int, data_dir: str) -> SentencePieceTokenizer:
    """The BPE of `corpus_name`'s train split, trained once and cached at
    `sentencepiece_path(...)` (written atomically; concurrent trainers write the
    same bytes)."""
    path = sentencepiece_path(data_dir, corpus_name, vocab_size)
    if not os.path.exists(path):
        examples = corpus.data_source(corpus_name, "train", data_dir)
        texts = (example["text"] for example in examples)
        _write_atomically(path, train_sentencepiece(texts, vocab_size))
    return SentencePieceTokenizer.from_file(path)


def _write_atomically(path: str, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it to `path`."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        file_descriptor, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    except OSError as error:
        raise OSError(f"cannot write tokenizer model {path!r}: {error}") from error
    try:
        with os.fdopen(file_descriptor, "wb") as tmp_file:
            tmp_file.write(data)
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def get_tokenizer(data_config: ml_collections.ConfigDict) -> ByteTokenizer | SentencePieceTokenizer:
    """The tokenizer `data_config.tokenizer` ("byte" or "sentencepiece") with
    `data_config.vocab_size` ids, for corpus `data_config.name` in
    `data_config.data_dir` (None: `corpus.default_data_dir()`)."""
    if data_config.tokenizer == "byte":
        return ByteTokenizer(vocab_size=data_config.vocab_size)
    if data_config.tokenizer == "sentencepiece":
        data_dir = corpus.resolve_data_dir(data_config.data_dir)
        return corpus_sentencepiece(data_config.name, data_config.vocab_size, data_dir)
    raise ValueError(f"unknown data.tokenizer {data_config.tokenizer!r}; known: {list(TOKENIZERS)}")
