"""research/decoding/speculative.py: the samples have the target's distribution (and a wrong acceptance
rule's do not), greedy decoding equals `generate`'s, rows roll back on their own, bad input is refused."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats as scipy_stats

from research import config as config_lib
from research.config import unfrozen
from research.decoding import speculative
from research.decoding.sampling import generate
from research.decoding.speculative import speculative_generate
from research.decoding.speculative_theory import expected_tokens_per_target_call
from research.decoding.speculative_verify import token_probabilities, verify_proposals
from research.models import make_model


def tiny_llama(num_layers: int, vocab_size: int, max_seq_len: int = 32):
    """A tiny LLaMA (width 32) with `vocab_size` ids."""
    overrides = [f"model.num_layers={num_layers}", "data.tokenizer=byte", "model.dim=32", "model.num_heads=2",
                 "model.num_kv_heads=1", "model.hidden_dim=64", f"model.max_seq_len={max_seq_len}",
                 f"train.seq_len={max_seq_len}"]
    config = unfrozen(config_lib.load("configs/llama2.py:tiny", overrides).model)
    config.vocab_size = vocab_size
    return make_model(ml_collections.FrozenConfigDict(config))


def tiny_model(num_layers: int, vocab_size: int, seed: int):
    """`tiny_llama` and its random parameters."""
    model = tiny_llama(num_layers, vocab_size)
    params = nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])
    return model, params


# ---- exactness at T > 0 ---------------------------------------------------------------------------

VOCAB, PROMPT, NEW, SAMPLES = 8, [1, 2, 3], 5, 4096
PAIRS = ((0, 1), (2, 3), (3, 4))  # (x_1, x_2), (x_3, x_4), (x_4, x_5): the prefill emits x_1, round 1 up to x_4
SAMPLING = dict(temperature=1.0, top_k=6)


@pytest.fixture(scope="module")
def sampling_pair():
    """A 1-layer target and an unrelated 1-layer draft over 8 ids."""
    return tiny_model(1, VOCAB, seed=0), tiny_model(1, VOCAB, seed=1)


def exact_joint(model, params):
    """P(x_1..x_NEW) of sampling the target alone after PROMPT, `[V] * NEW`, from full forwards of every
    PROMPT + (x_1, ..., x_{NEW-1})."""
    prefixes = [PROMPT + list(x) for x in itertools.product(range(VOCAB), repeat=NEW - 1)]
    logits = jax.jit(model.apply)({"params": params}, jnp.array(prefixes))[:, len(PROMPT) - 1:]
    # conditionals[x_1, ..., x_{NEW-1}, s] = P(x_{s+1} | x_1..x_s), whatever the later x's
    conditionals = np.asarray(token_probabilities(logits, top_p=None, **SAMPLING), np.float64).reshape(
        (VOCAB,) * (NEW - 1) + (NEW, VOCAB))
    joint = np.ones(())
    for s in range(NEW):
        joint = joint[..., None] * conditionals[(slice(None),) * s + (0,) * (NEW - 1 - s) + (s,)]
    return joint


def chi_square_p_values(samples, joint):
    """p-values of the observed PAIRS of new tokens against their exact joint distributions; cells
    expected below 5 are pooled."""
    p_values = []
    for axes in PAIRS:
        expected = joint.sum(axis=tuple(a for a in range(NEW) if a not in axes)).ravel() * len(samples)
        observed = np.bincount(samples[:, axes[0]] * VOCAB + samples[:, axes[1]], minlength=VOCAB**2)
        small = expected < 5
        assert observed[expected == 0].sum() == 0, "a token outside the top-k came out"
        if expected[small].sum() > 0:
            expected = np.append(expected[~small], expected[small].sum())
            observed = np.append(observed[~small], observed[small].sum())
        else:
            expected, observed = expected[~small], observed[~small]
        p_values.append(scipy_stats.chisquare(observed, expected).pvalue)
    return p_values


def speculative_samples(sampling_pair):
    (target, target_params), (draft, draft_params) = sampling_pair
    tokens, stats = speculative_generate(target, target_params, draft, draft_params, [PROMPT] * SAMPLES,
                                         max_new_tokens=NEW, num_draft_tokens=2, rng=jax.random.key(7), **SAMPLING)
    return np.asarray(tokens)[:, len(PROMPT):], stats


def test_samples_follow_the_targets_distribution_several_tokens_deep(sampling_pair):
    samples, stats = speculative_samples(sampling_pair)
    joint = exact_joint(*sampling_pair[0])
    np.testing.assert_allclose(joint.sum(), 1.0, rtol=1e-5)
    assert min(chi_square_p_values(samples, joint)) > 1e-3
    assert 0.2 < stats.alpha < 0.95 and 0 < stats.acceptance_rate < 1
    # each tested proposal is accepted with probability β, so the accepted fraction estimates α too
    accepted = sum(stats.accepted_per_row)
    assert abs(accepted / stats.proposals_tested - stats.alpha) < 0.02
    assert sum(stats.accepted_at_position) == accepted
    assert stats.accepted_at_position[0] >= stats.accepted_at_position[1]


def test_resampling_from_p_instead_of_the_residual_fails_the_same_test(sampling_pair, monkeypatch):
    wrong = functools.partial(verify_proposals, correction=lambda p, q: p)
    monkeypatch.setattr(speculative, "verify_proposals", wrong)
    samples, _ = speculative_samples(sampling_pair)
    assert min(chi_square_p_values(samples, exact_joint(*sampling_pair[0]))) < 1e-6


# ---- greedy: equal to generate ----------------------------------------------------------------------

RAGGED_PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
GREEDY_NEW = 10


@pytest.fixture(scope="module")
def greedy_pair():
    """A 1-layer target and an unrelated draft of the same shape (so that the target itself as the
    draft and the unrelated draft share one compiled program)."""
    return tiny_model(1, 32, seed=0), tiny_model(1, 32, seed=1)


@pytest.fixture(scope="module")
def stops_and_reference(greedy_pair):
    """Stop ids that end rows 0 and 2 of RAGGED_PROMPTS early, and generate's greedy output with them."""
    model, params = greedy_pair[0]
    plain = np.asarray(generate(model, params, RAGGED_PROMPTS, max_new_tokens=GREEDY_NEW))
    stops = (int(plain[0, 3 + 2]), int(plain[2, 1 + 4]))  # row 0's 3rd and row 2's 5th new token
    return stops, np.asarray(generate(model, params, RAGGED_PROMPTS, max_new_tokens=GREEDY_NEW, eos_id=stops))


@pytest.mark.parametrize("gamma", [1, 3])
@pytest.mark.parametrize("draft_kind", ["unrelated", "the target itself"])
def test_greedy_equals_generate_with_ragged_prompts_and_stop_ids(greedy_pair, stops_and_reference, draft_kind,
                                                                  gamma):
    (target, target_params), unrelated = greedy_pair
    draft, draft_params = greedy_pair[0] if draft_kind == "the target itself" else unrelated
    stops, expected = stops_and_reference
    tokens, stats = speculative_generate(target, target_params, draft, draft_params, RAGGED_PROMPTS,
                                         max_new_tokens=GREEDY_NEW, num_draft_tokens=gamma, eos_id=stops)
    np.testing.assert_array_equal(tokens, expected)
    assert (expected[0, 3 + 3:] == 0).all() and (expected[2, 1 + 5:] == 0).all()  # the stops did cut
    assert stats.target_calls == max(stats.rounds_per_row) + 1
    assert stats.draft_calls == gamma * max(stats.rounds_per_row) + 1
    if draft_kind == "the target itself":
        assert stats.acceptance_rate == stats.alpha == 1.0
        assert stats.tokens_per_target_call == expected_tokens_per_target_call(1.0, gamma) == gamma + 1
    else:
        assert stats.alpha < 1.0 and stats.tokens_per_target_call < gamma + 1


def test_rows_roll_back_on_their_own(greedy_pair, stops_and_reference):
    """A draft equal to the target except for one token's embedding: rows that never see that token
    accept every proposal, the row whose prompt holds it does not, and every row still decodes greedily."""
    (target, params), _ = greedy_pair
    stops, reference = stops_and_reference
    changed = min(set(range(32)) - set(reference[:2].ravel().tolist()) - set(stops))  # in neither clean row
    draft_params = {**params, "embed": params["embed"].at[changed].set(-3 * params["embed"][changed])}
    prompts = [*RAGGED_PROMPTS[:2], [changed, changed, 4]]
    tokens, stats = speculative_generate(target, params, target, draft_params, prompts, max_new_tokens=GREEDY_NEW,
                                         num_draft_tokens=3, eos_id=stops)
    np.testing.assert_array_equal(tokens, generate(target, params, prompts, max_new_tokens=GREEDY_NEW, eos_id=stops))
    accepted, rounds = np.array(stats.accepted_per_row), np.array(stats.rounds_per_row)
    np.testing.assert_array_equal(accepted[:2], 3 * rounds[:2])  # every proposal accepted
    assert accepted[2] < 3 * rounds[2]
    assert sum(stats.accepted_at_position) == accepted.sum() and stats.row_rounds == rounds.sum()
    # after the prefill's token a row keeps a + 1 tokens a round, the last round's cut to what is left
    from_rounds = np.array([kept_tokens(row[len(prompt):len(prompt) + GREEDY_NEW], stops) - 1
                            for row, prompt in zip(tokens, prompts)])
    overshoot = accepted + rounds - from_rounds
    assert ((0 <= overshoot) & (overshoot <= 3)).all()


def kept_tokens(new_tokens, stops) -> int:
    """How many of a row's new tokens are its own: up to its first stop id, or all of them."""
    hits = [i for i, token in enumerate(np.asarray(new_tokens).tolist()) if token in stops]
    return hits[0] + 1 if hits else len(new_tokens)


# ---- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, draft_shape, message", [
    ({}, dict(vocab_size=16), "the draft's vocab_size 16 differs from the target's 32"),
    (dict(num_draft_tokens=0), {}, "num_draft_tokens must be an int >= 1, got 0"),
    (dict(num_draft_tokens=2.0), {}, "num_draft_tokens must be an int >= 1, got 2.0"),
    (dict(max_new_tokens=25), {}, r"5 \+ max_new_tokens 25 \+ num_draft_tokens 2 \+ 1 = 33 exceeds the target's"),
    ({}, dict(max_seq_len=16), r"= 18 exceeds the draft's model.max_seq_len 16"),
    (dict(temperature=0.5), {}, "needs an rng key"),
    (dict(eos_id=32), {}, "eos_id 32 is outside"),
    (dict(top_p=0.0), {}, "top_p must be in"),
])
def test_bad_input_is_refused_naming_the_problem(greedy_pair, kwargs, draft_shape, message):
    (target, params), (draft, draft_params) = greedy_pair
    if draft_shape:  # refused before its parameters are used
        draft = tiny_llama(1, **{"vocab_size": 32, **draft_shape})
    with pytest.raises(ValueError, match=message):
        speculative_generate(target, params, draft, draft_params, RAGGED_PROMPTS,
                             **{"max_new_tokens": 10, "num_draft_tokens": 2, **kwargs})
