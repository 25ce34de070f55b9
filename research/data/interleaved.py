"""Interleaved image–text documents for early-fusion training (Chameleon), packed into LM rows.

A document is text, an image, text in one id space (research/models/chameleon.py's vocabulary):

    [bos] prefix  <boi> c_1 … c_N <eoi>  suffix [eos]       c_i = image_token_offset + code_i, N = image_seq_len

with the image's codes from a VQ tokenizer (the caller encodes the pixels; this module sees token
ids). Every captioned record (research/data/scenes.py) gives one document of each kind in `KINDS`,
a prompt followed by its completion:

    caption   "caption:" <image> │ " a small red circle and a large blue square"     image → text
    draw      "draw: a small red circle and a large blue square" <boi> │ c_1 … c_N <eoi>   text → image
    boxes     "boxes:" <image> │ " circle 3 4 6 6; square 12 20 12 12"               image → boxes as text

(│ marks where a prompt ends and generation starts.) Boxes are COCO's [x, y, w, h] in pixels, each
after its category, in the record's order. Text ids come from the text tokenizer and must lie
outside the image codes and the two markers.

Rows: each document becomes inputs x[:-1], targets x[1:] (every token trained: image codes as
text), documents longer than seq_len + 1 tokens are an error (a cut would split an image span),
and documents are packed first-fit into rows with segment ids and per-document positions
(research/data/packing.py). The streams are deterministic: shuffled with `seed`, nothing downloaded.
"""

from collections.abc import Sequence

import grain
import numpy as np

from research.data import packing
from research.data.scenes import ImageRecord

KINDS = ("caption", "draw", "boxes")
PROMPTS = {"caption": "caption:", "draw": "draw: {caption}", "boxes": "boxes:"}


def box_text(record: ImageRecord) -> str:
    """"circle 3 4 6 6; square 12 20 12 12": each object's category and COCO box [x, y, w, h]."""
    return "; ".join(f"{category} {' '.join(str(int(v)) for v in box)}"
                     for category, box in zip(record.categories, record.boxes))


def check_text_ids(tokenizer, model_config) -> None:
    """ValueError unless the text tokenizer's ids [0, vocab_size) avoid the image codes and markers."""
    first_code = model_config.image_token_offset
    taken = [first_code, model_config.begin_image_id, model_config.end_image_id]
    if tokenizer.vocab_size > min(taken):
        raise ValueError(f"config field data.vocab_size: the text ids [0, {tokenizer.vocab_size}) overlap the image "
                         f"codes (from {first_code}) or the markers ({taken[1]}, {taken[2]})")


def check_image_ids(image_ids, model_config) -> np.ndarray:
    """`image_ids` as int32 `[image_seq_len]`; ValueError naming a wrong length or an id that is no image code."""
    image_ids = np.asarray(image_ids, np.int32)
    if image_ids.shape != (model_config.image_seq_len,):
        raise ValueError(f"an image span of {image_ids.size} tokens (shape {image_ids.shape}): an image is "
                         f"model.image_seq_len = {model_config.image_seq_len} codes")
    first, stop = model_config.image_token_offset, model_config.image_token_offset + model_config.num_image_codes
    outside = (image_ids < first) | (image_ids >= stop)
    if outside.any():
        raise ValueError(f"image token id {image_ids[outside][0]} is not an image code [{first}, {stop})")
    return image_ids


def prompt_ids(kind: str, record: ImageRecord, image_ids, tokenizer, model_config) -> list[int]:
    """The prompt of a `kind` document of `record` whose image is `image_ids` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown document kind {kind!r}; known: {KINDS}")
    text = [tokenizer.bos_id] + tokenizer.encode(PROMPTS[kind].format(caption=record.caption))
    if kind == "draw":
        return text + [model_config.begin_image_id]
    image = check_image_ids(image_ids, model_config).tolist()
    return text + [model_config.begin_image_id] + image + [model_config.end_image_id]


def completion_ids(kind: str, record: ImageRecord, image_ids, tokenizer, model_config) -> list[int]:
    """What a `kind` document writes after its prompt, up to (not including) eos."""
    if kind == "draw":
        return check_image_ids(image_ids, model_config).tolist() + [model_config.end_image_id]
    return tokenizer.encode(" " + (record.caption if kind == "caption" else box_text(record)))


def document_ids(kind: str, record: ImageRecord, image_ids, tokenizer, model_config) -> np.ndarray:
    """int32 [bos] prompt completion [eos]."""
    ids = (prompt_ids(kind, record, image_ids, tokenizer, model_config)
           + completion_ids(kind, record, image_ids, tokenizer, model_config) + [tokenizer.eos_id])
    return np.asarray(ids, np.int32)


def interleaved_documents(records: Sequence[ImageRecord], image_ids, tokenizer, model_config,
                          kinds: Sequence[str] = KINDS) -> list[np.ndarray]:
    """One document of each of `kinds` per record, record by record; `image_ids [len(records), N]`."""
    check_text_ids(tokenizer, model_config)
    if len(image_ids) != len(records):
        raise ValueError(f"{len(image_ids)} images of token ids for {len(records)} records")
    return [document_ids(kind, record, ids, tokenizer, model_config)
            for record, ids in zip(records, image_ids) for kind in kinds]


def document_chunks(documents: Sequence[np.ndarray], seq_len: int) -> list[dict[str, np.ndarray]]:
    """Each document as {"inputs": x[:-1], "targets": x[1:]}; ValueError naming one over seq_len + 1 tokens."""
    for index, document in enumerate(documents):
        if len(document) > seq_len + 1:
            raise ValueError(f"document {index} has {len(document)} tokens, more than train.seq_len + 1 = "
                             f"{seq_len + 1}; an image span may not be cut")
    return [{"inputs": document[:-1], "targets": document[1:]} for document in documents]


def make_interleaved_batches(documents: Sequence[np.ndarray], *, batch_size: int, seq_len: int, seed: int,
                             process_index: int = 0, process_count: int = 1, num_epochs: int | None = None):
    """A resumable iterator of packed rows (the LM fields of research/data/packing.py), `batch_size` a
    batch, of process `process_index`'s share of `documents`: shuffled with `seed` afresh each epoch,
    for ever when `num_epochs` is None, else for `num_epochs` epochs with padding rows completing the last batch."""
    chunks = document_chunks(documents, seq_len)[process_index::process_count]
    if not chunks:
        raise ValueError(f"{len(documents)} documents are fewer than process_count={process_count}")
    ordered = grain.MapDataset.source(chunks).shuffle(seed).repeat(num_epochs)
    stream = ordered.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    rows = packing.pack_rows(stream, seq_len, max(batch_size, 8))
    if num_epochs is not None:
        rows = packing.PadRowsIterDataset(rows, row=packing.padding_row(seq_len), multiple=batch_size)
    return iter(rows.batch(batch_size))
