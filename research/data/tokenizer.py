"""Tokenizers: text <-> token ids, behind one interface.

Every tokenizer has `vocab_size`, `pad_id` (always 0), `bos_id`, `eos_id`,
`encode(text) -> list[int]` (no special tokens added) and `decode(ids) -> str`
(pad, bos and eos skipped; an id outside [0, vocab_size) raises ValueError naming it).
Tokenizers compare equal when they encode identically, so they can key caches.

Reserved tokens, for chat and reasoning templates (research/data/reasoning.py):
`<think>`, `</think>` (around the model's reasoning), `<|system|>`, `<|user|>`,
`<|assistant|>` (open a turn) and `<|end|>` (ends a turn). Each is one id, exposed as
the attributes `think_id`, `end_think_id`, `system_id`, `user_id`, `assistant_id` and
`end_of_turn_id`. `encode` maps the literal tag strings in a text to those ids and
`decode` renders the ids as the literal strings (not skipped: parsers need them), so a
rendered template round-trips.

- `ByteTokenizer`: UTF-8 bytes; pad 0, bos 1, eos 2, byte b -> id b + 3, the reserved
  tokens at 259..264 in `RESERVED_TOKENS` order (vocab_size 265, or larger to pad the
  vocabulary with unused ids). vocab_size 259..264 is the layout from before the
  reserved tokens (configs with 260 ids rely on it): tags are then plain bytes and
  asking for a reserved id raises ValueError.
- `SentencePieceTokenizer`: SentencePiece BPE (the LLaMA tokenizer family) trained
  offline on a corpus' train split; pad 0, bos 1, eos 2, unk 3, the reserved tokens
  at 4..9 (user-defined symbols), byte fallback, no normalisation and no dummy
  prefix, so `decode(encode(text)) == text` for any text. A model without the
  reserved tokens (trained before them) is rejected; the cache file name carries a
  digest of `RESERVED_TOKENS`, so such old caches are never reused but retrained.
"""

import dataclasses
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from typing import ClassVar

import ml_collections
import numpy as np
import sentencepiece

from research.data import corpus

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
TOKENIZERS = ("byte", "sentencepiece")

THINK, END_THINK = "<think>", "</think>"
SYSTEM, USER, ASSISTANT, END_OF_TURN = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
RESERVED_TOKENS = (THINK, END_THINK, SYSTEM, USER, ASSISTANT, END_OF_TURN)
# Splitting on one capture group puts the tags at the odd indices of the result.
_RESERVED_SPLIT = re.compile("(" + "|".join(map(re.escape, RESERVED_TOKENS)) + ")")
_RESERVED_DIGEST = hashlib.sha256("\n".join(RESERVED_TOKENS).encode()).hexdigest()[:8]


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


def _reserved_id_attribute(token: str) -> property:
    """A read-only attribute holding `token`'s id, from the tokenizer's `_reserved_id`."""
    return property(lambda self: self._reserved_id(token), doc=f"The id of the reserved token {token!r}.")


class ReservedTokenIds:
    """The reserved tokens' ids as attributes; a subclass defines `_reserved_id(token)`."""

    think_id = _reserved_id_attribute(THINK)
    end_think_id = _reserved_id_attribute(END_THINK)
    system_id = _reserved_id_attribute(SYSTEM)
    user_id = _reserved_id_attribute(USER)
    assistant_id = _reserved_id_attribute(ASSISTANT)
    end_of_turn_id = _reserved_id_attribute(END_OF_TURN)


@dataclasses.dataclass(frozen=True)
class ByteTokenizer(ReservedTokenIds):
    """UTF-8 bytes shifted by the three special ids (byte b <-> id b + 3), then the
    reserved tokens (259..264).

    Ids from 265 up to `vocab_size` - 1 only pad the vocabulary; `decode` skips them
    like the specials. With vocab_size 259..264 there are no reserved tokens (the
    earlier layout) and all ids from 259 pad. Byte sequences that are not valid UTF-8
    decode to U+FFFD.
    """

    vocab_size: int = 259 + len(RESERVED_TOKENS)
    pad_id: ClassVar[int] = PAD_ID
    bos_id: ClassVar[int] = BOS_ID
    eos_id: ClassVar[int] = EOS_ID
    byte_offset: ClassVar[int] = 3
    reserved_offset: ClassVar[int] = 3 + 256

    def __post_init__(self):
        if self.vocab_size < self.reserved_offset:
            raise ValueError(f"ByteTokenizer needs vocab_size >= {self.reserved_offset}, got {self.vocab_size}")

    @property
    def has_reserved_tokens(self) -> bool:
        """Whether the vocabulary holds the reserved tokens (vocab_size >= 265)."""
        return self.vocab_size >= self.reserved_offset + len(RESERVED_TOKENS)

    def _reserved_id(self, token: str) -> int:
        if not self.has_reserved_tokens:
            raise ValueError(f"ByteTokenizer(vocab_size={self.vocab_size}) has no id for {token!r}: "
                             f"the reserved tokens need vocab_size >= {self.reserved_offset + len(RESERVED_TOKENS)}")
        return self.reserved_offset + RESERVED_TOKENS.index(token)

    def encode(self, text: str) -> list[int]:
        if not self.has_reserved_tokens:
            return self._encode_bytes(text)
        ids = []
        for index, piece in enumerate(_RESERVED_SPLIT.split(text)):
            ids.extend([self._reserved_id(piece)] if index % 2 else self._encode_bytes(piece))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = np.asarray(check_ids(ids, self.vocab_size), dtype=np.int64)
        if not self.has_reserved_tokens:
            return self._decode_bytes(ids)
        pieces, start = [], 0
        reserved_end = self.reserved_offset + len(RESERVED_TOKENS)
        for position in np.flatnonzero((ids >= self.reserved_offset) & (ids < reserved_end)):
            pieces += [self._decode_bytes(ids[start:position]), RESERVED_TOKENS[ids[position] - self.reserved_offset]]
            start = position + 1
        return "".join(pieces) + self._decode_bytes(ids[start:])

    def _encode_bytes(self, text: str) -> list[int]:
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        return (data.astype(np.int32) + self.byte_offset).tolist()

    def _decode_bytes(self, ids: np.ndarray) -> str:
        """The UTF-8 text of the byte ids among `ids`; every other id is dropped."""
        is_byte = (ids >= self.byte_offset) & (ids < self.reserved_offset)
        data = (ids[is_byte] - self.byte_offset).astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer(ReservedTokenIds):
    """A SentencePiece model given as its serialised `ModelProto` bytes; ValueError if
    the model does not encode each reserved token as one piece (e.g. it was trained
    before they existed: retrain it with `train_sentencepiece`)."""

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._processor.vocab_size()
        self._digest = hashlib.sha256(model_proto).hexdigest()
        self._reserved_ids = {token: self._processor.piece_to_id(token) for token in RESERVED_TOKENS}
        missing = [token for token, i in self._reserved_ids.items() if self._processor.encode(token) != [i]]
        if missing:
            raise ValueError(f"the SentencePiece model lacks the reserved tokens {missing} as single pieces; "
                             "retrain it with train_sentencepiece")

    @classmethod
    def from_file(cls, path: str) -> "SentencePieceTokenizer":
        """Loads a `.model` file; RuntimeError naming `path` if it is not one, ValueError
        naming it if it lacks the reserved tokens."""
        with open(path, "rb") as model_file:
            model_proto = model_file.read()
        try:
            return cls(model_proto)
        except RuntimeError as error:
            raise RuntimeError(
                f"tokenizer model {path!r} is broken ({error}); delete it to retrain"
            ) from error
        except ValueError as error:
            raise ValueError(f"tokenizer model {path!r}: {error}") from error

    def _reserved_id(self, token: str) -> int:
        return self._reserved_ids[token]

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

    The reserved tokens are user-defined symbols: ids 4..9, always one piece each.
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
            user_defined_symbols=list(RESERVED_TOKENS),
        )
    except RuntimeError as error:
        raise ValueError(f"cannot train a {vocab_size}-token SentencePiece BPE: {error}") from error
    return model.getvalue()


def sentencepiece_path(data_dir: str, corpus_name: str, vocab_size: int) -> str:
    """Where `corpus_sentencepiece` caches its model. The name carries a digest of
    `RESERVED_TOKENS`: a model cached with other (or no) reserved tokens lies elsewhere
    and is not reused."""
    name = f"{corpus_name}_bpe{vocab_size}_reserved-{_RESERVED_DIGEST}.model"
    return os.path.join(data_dir, "tokenizers", name)


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
