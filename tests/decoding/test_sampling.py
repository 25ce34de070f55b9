"""research/decoding/sampling.py: greedy equals argmax of the full forward; sampling filters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import config as config_lib
from research.config import unfrozen
from research.decoding.sampling import GREEDY_BELOW, filter_logits, first_argmax, generate
from research.models import make_model


@pytest.fixture(scope="module")
def model_and_params():
    overrides = ["model.num_layers=2", "model.vocab_size=300", "data.tokenizer=byte", "model.dim=64",
                 "model.num_heads=4", "model.num_kv_heads=2", "model.hidden_dim=96"]
    model = make_model(config_lib.load("configs/llama2.py:tiny", overrides).model)
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    return model, params


def with_attention_impl(model, impl):
    """The same model (same parameters) with `model.attention_impl = impl`."""
    config = unfrozen(model.config)
    config.attention_impl = impl
    return model.clone(config=ml_collections.FrozenConfigDict(config))


def greedy_reference(model, params, prompt, steps):
    seq = list(prompt)
    for _ in range(steps):
        logits = model.apply({"params": params}, jnp.array([seq]))
        seq.append(int(jnp.argmax(logits[0, -1])))
    return seq


RAGGED_PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]


@pytest.fixture(scope="module")
def ragged_greedy_references(model_and_params):
    """Stepwise argmax continuations of RAGGED_PROMPTS by the full forward ("xla"), computed once."""
    model, params = model_and_params
    return [greedy_reference(model, params, prompt, 7) for prompt in RAGGED_PROMPTS]


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_greedy_with_cache_equals_stepwise_argmax_for_ragged_prompts(model_and_params, ragged_greedy_references,
                                                                      impl):
    model, params = model_and_params
    out = np.asarray(generate(with_attention_impl(model, impl), params, RAGGED_PROMPTS, max_new_tokens=7))
    assert out.shape == (3, 5 + 7)
    for row, expected in zip(out, ragged_greedy_references):
        assert row[: len(expected)].tolist() == expected
        assert (row[len(expected):] == 0).all()


def test_array_prompts_give_prompt_then_new_tokens(model_and_params):
    model, params = model_and_params
    prompts = np.array([[1, 2, 3], [4, 5, 6]])
    out = np.asarray(generate(model, params, prompts, max_new_tokens=4))
    np.testing.assert_array_equal(out[:, :3], prompts)
    assert out[0].tolist() == greedy_reference(model, params, [1, 2, 3], 4)


def test_eos_stops_a_row_and_pads_after_it(model_and_params):
    model, params = model_and_params
    first = greedy_reference(model, params, [5, 6, 7], 1)[-1]
    out = np.asarray(generate(model, params, [[5, 6, 7]], max_new_tokens=5, eos_id=first))
    assert out[0, 3] == first and (out[0, 4:] == 0).all()


def test_a_row_stops_at_the_first_of_several_stop_ids(model_and_params, ragged_greedy_references):
    model, params = model_and_params
    new = [expected[len(prompt):] for prompt, expected in zip(RAGGED_PROMPTS, ragged_greedy_references)]
    stops = (new[0][1], new[2][3])  # row 0 stops by its 2nd new token, row 2 by its 4th
    out = np.asarray(generate(model, params, RAGGED_PROMPTS, max_new_tokens=7, eos_id=stops))
    for row, prompt, tokens in zip(out, RAGGED_PROMPTS, new):
        hits = [k for k, token in enumerate(tokens) if token in stops]
        kept = hits[0] + 1 if hits else len(tokens)  # the stop id itself is kept
        assert row.tolist() == prompt + tokens[:kept] + [0] * (len(row) - len(prompt) - kept)
    assert not out[0, 3 + 2:].any() and not out[2, 1 + 4:].any()


@pytest.mark.parametrize("eos_id, message", [(300, "eos_id 300 is outside"), ([2, -1], "eos_id -1 is outside"),
                                             ("2", "int or a sequence of ints"), ([[2]], "int or a sequence")])
def test_bad_stop_ids_are_rejected(model_and_params, eos_id, message):
    model, params = model_and_params
    with pytest.raises(ValueError, match=message):
        generate(model, params, [[5]], max_new_tokens=3, eos_id=eos_id)


def test_sampling_is_seeded_and_respects_top_k(model_and_params):
    model, params = model_and_params
    kwargs = dict(max_new_tokens=6, temperature=1.0, top_k=1, rng=jax.random.key(1))
    np.testing.assert_array_equal(generate(model, params, [[5, 6]], **kwargs),
                                  generate(model, params, [[5, 6]], max_new_tokens=6))
    a = generate(model, params, [[5, 6]] * 4, max_new_tokens=8, temperature=2.0, rng=jax.random.key(1))
    b = generate(model, params, [[5, 6]] * 4, max_new_tokens=8, temperature=2.0, rng=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert len({tuple(r) for r in np.asarray(a).tolist()}) > 1


def test_filter_logits_top_p_keeps_the_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(np.asarray(filter_logits(logits, temperature=1.0, top_k=None, top_p=0.7)))
    np.testing.assert_array_equal(kept, [[True, True, False, False]])
    kept = np.isfinite(np.asarray(filter_logits(logits, temperature=1.0, top_k=3, top_p=None)))
    np.testing.assert_array_equal(kept, [[True, True, True, False]])


def test_a_temperature_below_greedy_below_decodes_exactly_greedily(model_and_params):
    """1e-40 underflows in float32: sampled, it gave garbage instead of the argmax."""
    model, params = model_and_params
    greedy = np.asarray(generate(model, params, RAGGED_PROMPTS, max_new_tokens=7, temperature=0.0))
    for temperature in (1e-40, np.float32(1e-40), GREEDY_BELOW / 2):
        cold = generate(model, params, RAGGED_PROMPTS, max_new_tokens=7, temperature=temperature,
                        rng=jax.random.key(3))
        np.testing.assert_array_equal(np.asarray(cold), greedy, err_msg=str(temperature))
    np.testing.assert_array_equal(generate(model, params, RAGGED_PROMPTS, max_new_tokens=7, temperature=1e-40),
                                  greedy)  # greedy needs no rng


@pytest.mark.parametrize("prompts, kwargs, message", [
    ([[5, 300]], {}, "outside the vocabulary"),
    ([[]], {}, "at least one token"),
    ([[5]], {"temperature": 1.0}, "rng"),
    ([[5]], {"max_new_tokens": 2000}, "max_seq_len"),
    ([[5]], {"top_p": 1.5}, "top_p"),
    ([[5]], {"temperature": float("nan")}, "temperature must be a finite number >= 0, got nan"),
    ([[5]], {"temperature": float("inf")}, "temperature must be a finite number >= 0, got inf"),
    ([[5]], {"temperature": -1.0}, "temperature must be a finite number >= 0, got -1.0"),
    ([[5]], {"temperature": "0.5"}, "temperature must be a finite number"),
    ([[5]], {"temperature": True}, "temperature must be a finite number"),
    (np.array([[5.7, 6.2]]), {}, "prompts must be an int array .* got float64"),
    (np.array([[True, False]]), {}, "prompts must be an int array .* got bool"),
    ([[5, 6.0]], {}, "prompt 0 has token id 6.0, which is not an int"),
    ([[5], [True]], {}, "prompt 1 has token id True, which is not an int"),
    ([np.array([5.0])], {}, "prompt 0 must be a 1-d array of integer token ids, got float64"),
    ([5, 6], {}, "prompt 0 must be a list of token ids, got 5"),
    ([[5]], {"max_new_tokens": 2.5}, "max_new_tokens must be an int >= 1, got 2.5"),
    ([[5]], {"max_new_tokens": True}, "max_new_tokens must be an int >= 1, got True"),
    ([[5]], {"max_new_tokens": 0}, "max_new_tokens must be an int >= 1, got 0"),
    ([[5]], {"top_k": 2.5, "temperature": 1.0, "rng": jax.random.key(0)}, "top_k must be an int in \\[1, 301\\)"),
    ([[5]], {"pad_id": 300}, "pad_id must be an int in \\[0, 300\\), got 300"),
])
def test_bad_requests_are_rejected(model_and_params, prompts, kwargs, message):
    model, params = model_and_params
    with pytest.raises(ValueError, match=message):
        generate(model, params, prompts, **{"max_new_tokens": 3, **kwargs})


def test_first_argmax_is_jnp_argmax_with_ties_and_nans():
    logits = jnp.array([[1.0, 3.0, 3.0, 0.0], [-jnp.inf, -jnp.inf, -jnp.inf, -jnp.inf], [2.0, jnp.nan, 5.0, jnp.nan],
                        [0.5, 0.25, 0.125, 0.75]])
    np.testing.assert_array_equal(first_argmax(logits), jnp.argmax(logits, axis=-1))
    np.testing.assert_array_equal(first_argmax(logits), [1, 0, 1, 3])
    assert first_argmax(logits).dtype == jnp.int32
