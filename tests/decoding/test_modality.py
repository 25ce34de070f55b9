"""research/decoding/modality.py: the text/image automaton, and sampling from a random Chameleon under it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.decoding.modality import modality_constraint
from research.decoding.sampling import generate
from research.models import make_model
from research.models.chameleon import is_image_token

MODEL_CONFIG = config_lib.load("configs/chameleon.py:tiny", ["model.num_layers=1"]).model
N, BEGIN, END = MODEL_CONFIG.image_seq_len, MODEL_CONFIG.begin_image_id, MODEL_CONFIG.end_image_id
STOP = 2  # a text id
CODE, TEXT = MODEL_CONFIG.image_token_offset + 7, 65


def violations(tokens, inside: bool) -> list[str]:
    """Where `tokens` break the alternation: text ids or markers inside an image, codes outside one,
    an image of other than N codes. `inside`: the tokens continue an image with no code yet."""
    problems, written = [], 0 if inside else None
    for position, token in enumerate(tokens):
        if written is None:
            if is_image_token(MODEL_CONFIG, token) or token == END:
                problems.append(f"{token} outside an image at {position}")
            written = 0 if token == BEGIN else None
        elif written < N:
            if not is_image_token(MODEL_CONFIG, token):
                problems.append(f"{token} inside an image at {position}")
            written += 1
        else:
            if token != END:
                problems.append(f"{token} where the end marker belongs at {position}")
            written = None
    return problems


def walk(constraint, tokens):
    """The states the constraint passes through on `tokens` from its start (−1 once a token is refused)."""
    state, states = 0, []
    for token in tokens:
        state = int(constraint.next_state[state, token]) if state >= 0 else -1
        states.append(state)
    return states


def test_text_then_one_whole_image_then_text():
    constraint = modality_constraint(MODEL_CONFIG)
    assert constraint.next_state.shape == (N + 2, MODEL_CONFIG.vocab_size) and constraint.accepting[0]
    document = [TEXT, BEGIN, *[CODE] * N, END, TEXT]
    states = walk(constraint, document)
    assert states == [0, 1, *range(2, N + 2), 0, 0]
    assert list(constraint.distance[[0, 1, N + 1]]) == [0, N + 1, 1]
    for refused in ([CODE], [END], [BEGIN, TEXT], [BEGIN, BEGIN], [BEGIN, *[CODE] * N, CODE],
                    [BEGIN, *[CODE] * (N - 1), END]):
        assert walk(constraint, refused)[-1] == -1, refused


@pytest.mark.parametrize("written", [0, 5, N])
def test_start_inside_an_image(written):
    constraint = modality_constraint(MODEL_CONFIG, image_codes_written=written)
    assert not constraint.accepting[0] and constraint.distance[0] == N + 1 - written
    rest_of_image = [*[CODE] * (N - written), END]
    finished = walk(constraint, rest_of_image)[-1]
    assert constraint.accepting[finished] and walk(constraint, [*rest_of_image, TEXT])[-1] == finished
    assert walk(constraint, [TEXT])[-1] == -1


def test_image_codes_written_beyond_an_image_is_refused():
    with pytest.raises(ValueError, match="image_codes_written must be in \\[0, image_seq_len = 64\\], got 65"):
        modality_constraint(MODEL_CONFIG, image_codes_written=N + 1)


def test_sampling_from_a_random_model_keeps_text_and_images_apart():
    """Rows start in text, or right after a begin marker (the prompt asks for an image); sampled at
    temperature 1, none of the new tokens breaks the alternation, and the asked-for image is whole."""
    model = make_model(MODEL_CONFIG)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    prompts = np.array([[TEXT, 66, 67, 68]] * 3 + [[TEXT, 66, 67, BEGIN]] * 3, np.int32)
    new = N + 12
    for rows, written in ((slice(0, 3), None), (slice(3, 6), 0)):
        tokens = np.asarray(generate(model, params, prompts[rows], max_new_tokens=new, temperature=1.0,
                                     rng=jax.random.key(1), eos_id=STOP,
                                     constraint=modality_constraint(MODEL_CONFIG, written)))
        for row in tokens[:, 4:]:
            kept = row[: list(row).index(STOP) + 1] if STOP in row else row
            assert violations(kept, inside=written is not None) == [], kept
        if written is not None:
            assert np.all(is_image_token(MODEL_CONFIG, tokens[:, 4:4 + N])) and np.all(tokens[:, 4 + N] == END)
            logits = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, jnp.asarray(tokens[:, :4 + N]))
            favourite = np.argmax(np.asarray(logits)[:, 3:3 + N], axis=-1)
            assert not np.all(is_image_token(MODEL_CONFIG, favourite))  # unconstrained, it would write text there
