"""Modality-constrained decoding for Chameleon's interleaved vocabulary (research/models/chameleon.py).

`modality_constraint(model_config)` is a `TokenConstraint` (research/decoding/structured) for
`generate(..., constraint=...)`: outside an image only text ids and the begin-of-image marker;
after a begin marker exactly N = image_seq_len image codes, then the end-of-image marker; then
text again. Its states and moves (−1 elsewhere):

    0              text       text id → 0, begin marker → 1             accepting (a stop id may end here)
    1 + i, i < N   i codes    image code → 2 + i
    1 + N          N codes    end marker → 0

The fewest tokens back to text (`distance`) are 0 from state 0 and N + 1 − i from state 1 + i,
so `generate` opens an image only when it can close it within max_new_tokens. Stop ids are
text ids, allowed in state 0 only. With `image_codes_written = k` the rows start inside an
image whose begin marker and k codes end the prompt (k = 0: the prompt ends with the marker,
asking for an image); the state numbering is then swapped so that the start, state 1 + k, is 0.

The table is dense, [N + 2, vocab_size] int32: 1026 × 65,536 (269 MB) for Chameleon's 7B/34B.
"""

import numpy as np

from research.decoding.structured import TokenConstraint
from research.models.chameleon import image_token_ids


def modality_constraint(model_config, image_codes_written: int | None = None) -> TokenConstraint:
    """The text/image alternation of `model_config`'s vocabulary, starting in text, or inside an
    image with `image_codes_written` of its image_seq_len codes already in the prompt."""
    n = model_config.image_seq_len
    begin, end = model_config.begin_image_id, model_config.end_image_id
    codes = image_token_ids(model_config)
    text = np.ones(model_config.vocab_size, bool)
    text[codes] = text[begin] = text[end] = False
    next_state = np.full((n + 2, model_config.vocab_size), -1, np.int32)
    next_state[0, text] = 0
    next_state[0, begin] = 1
    next_state[1 + np.arange(n)[:, None], codes[None, :]] = 2 + np.arange(n)[:, None]
    next_state[1 + n, end] = 0
    distance = np.concatenate([[0], n + 1 - np.arange(n + 1)]).astype(np.int32)
    accepting = np.arange(n + 2) == 0
    if image_codes_written is None:
        return TokenConstraint(next_state, distance, accepting)
    if not 0 <= image_codes_written <= n:
        raise ValueError(f"image_codes_written must be in [0, image_seq_len = {n}], got {image_codes_written}")
    order = np.arange(n + 2)  # new state → old state: the start 1 + k and the text state swap numbers
    order[[0, 1 + image_codes_written]] = order[[1 + image_codes_written, 0]]
    renumbered = np.where(next_state >= 0, np.argsort(order)[next_state], -1).astype(np.int32)
    return TokenConstraint(renumbered[order], distance[order], accepting[order])
