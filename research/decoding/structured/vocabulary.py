"""A tokenizer's vocabulary as bytes: what each token id spells, None for ids that never appear
inside a JSON document (pad, bos, eos, unk, control and reserved tokens, padding ids).

- ByteTokenizer: id b + 3 spells the byte b.
- SentencePieceTokenizer: a piece spells its text with "▁" as a space; byte-fallback pieces
  "<0xNN>" spell the byte NN (so one UTF-8 character may take several tokens, and one token
  may span several JSON pieces, e.g. `":"`).
"""

import hashlib

import sentencepiece

from research.data.tokenizer import RESERVED_TOKENS, ByteTokenizer, SentencePieceTokenizer

SPACE_PIECE = "\u2581"


def token_bytes(tokenizer) -> list[bytes | None]:
    """[vocab_size] the bytes of every token id (None: never inside a document); ValueError for a
    tokenizer of another kind."""
    if isinstance(tokenizer, ByteTokenizer):
        offset = tokenizer.byte_offset
        return [bytes([i - offset]) if offset <= i < offset + 256 else None for i in range(tokenizer.vocab_size)]
    if isinstance(tokenizer, SentencePieceTokenizer):
        processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer.model_proto)
        return [_piece_bytes(processor, i) for i in range(tokenizer.vocab_size)]
    raise ValueError(f"tokenizer of type {type(tokenizer).__name__} is not supported; "
                     "expected a ByteTokenizer or a SentencePieceTokenizer")


def _piece_bytes(processor, token_id: int) -> bytes | None:
    piece = processor.id_to_piece(token_id)
    if processor.is_control(token_id) or processor.is_unknown(token_id) or processor.is_unused(token_id) \
            or piece in RESERVED_TOKENS:
        return None
    if processor.is_byte(token_id):
        return bytes([int(piece[3:5], 16)])
    return piece.replace(SPACE_PIECE, " ").encode() or None


def fingerprint(vocabulary: list[bytes | None]) -> str:
    """sha256 of the vocabulary (each token's bytes, or its absence), for cache keys."""
    digest = hashlib.sha256()
    for spelled in vocabulary:
        digest.update(b"-" if spelled is None else len(spelled).to_bytes(4, "little") + spelled)
    return digest.hexdigest()
