"""research/data/tasks/preferences.py (+ preference_tasks.py, safety.py): judge-ordered pairs."""

import collections
import dataclasses

import pytest

from research.data.tasks import safety
from research.data.tasks.preferences import (
    KINDS,
    STRENGTHS,
    check_pairs,
    judge,
    pairs_of,
    preference_pairs,
    preference_prompts,
    strength_of,
)

COUNT = 80


@pytest.fixture(scope="module")
def pairs():
    return preference_pairs(COUNT, seed=1)


def test_pairs_are_ordered_by_the_judge_with_the_strength_of_their_gap(pairs):
    prompts = {prompt.id: prompt for prompt in preference_prompts(COUNT, seed=1)}
    for pair in pairs:
        spec = prompts[pair.prompt_id].spec
        assert judge(pair.kind, spec, pair.chosen) == pair.chosen_score
        assert judge(pair.kind, spec, pair.rejected) == pair.rejected_score
        assert pair.chosen_score > pair.rejected_score and pair.chosen != pair.rejected
        gap = pair.chosen_score - pair.rejected_score
        assert pair.strength_name == STRENGTHS[pair.strength]
        assert [0.75, 0.5, 0.25, 0.0][pair.strength] <= gap + 1e-9
        assert pair.strength == 0 or gap < [1.0, 0.75, 0.5, 0.25][pair.strength]


def test_every_kind_and_every_strength_occurs(pairs):
    assert set(collections.Counter(pair.kind for pair in pairs)) == set(KINDS)
    assert set(collections.Counter(pair.strength for pair in pairs)) == set(range(len(STRENGTHS)))


def test_candidates_span_the_grades_and_the_correct_one_wins():
    for prompt in preference_prompts(COUNT, seed=2):
        scores = {grade: judge(prompt.kind, prompt.spec, response) for grade, response in prompt.candidates}
        best = "refusal" if prompt.spec.get("unsafe") else ("compliance" if prompt.kind == "safety" else "correct")
        assert scores[best] == 1.0 == max(scores.values())
        assert max(scores.values()) - min(scores.values()) >= 0.5
        chosen = {pair.chosen for pair in pairs_of(prompt)}
        assert dict(prompt.candidates)[best] in chosen


def test_judges_score_any_text_without_raising():
    for prompt in preference_prompts(len(KINDS), seed=3):
        for response in ("", "9" * 5000, "[" * 5000, "__import__('os')", None):
            assert 0.0 <= judge(prompt.kind, prompt.spec, response) <= 1.0


def test_safety_pairs_are_labelled_and_judged_by_the_banned_topics():
    prompts = preference_prompts(60, seed=4, kinds=["safety"])
    banned = set(safety.banned_topics(4))
    for prompt in prompts:
        assert prompt.spec["unsafe"] == (prompt.spec["topic"] in banned)
        refusal = dict(prompt.candidates)["refusal"]
        assert judge("safety", prompt.spec, refusal) == (1.0 if prompt.spec["unsafe"] else 0.5)
        for pair in pairs_of(prompt):
            assert pair.unsafe == prompt.spec["unsafe"]
    assert 0.3 < sum(prompt.spec["unsafe"] for prompt in prompts) / len(prompts) < 0.7
    assert not banned & {f"{name} {noun}" for name in safety.topic_names(4) for noun in safety.BENIGN_NOUNS}


def test_generation_is_deterministic_and_seeded(pairs):
    assert preference_pairs(COUNT, seed=1) == pairs
    assert preference_prompts(10, seed=1) == preference_prompts(20, seed=1)[:10]
    assert [p.prompt for p in preference_prompts(10, seed=5)] != [p.prompt for p in preference_prompts(10, seed=1)]


def test_check_pairs_rejects_identical_misordered_or_mislabelled_pairs(pairs):
    pair = pairs[0]
    with pytest.raises(ValueError, match="pair 1 .*identical chosen and rejected"):
        check_pairs([pair, dataclasses.replace(pair, rejected=pair.chosen)])
    with pytest.raises(ValueError, match="not above rejected"):
        check_pairs([dataclasses.replace(pair, chosen_score=pair.rejected_score)])
    wrong_strength = (pair.strength + 1) % len(STRENGTHS)
    with pytest.raises(ValueError, match="does not match the score gap"):
        check_pairs([dataclasses.replace(pair, strength=wrong_strength)])


def test_strength_thresholds_and_bad_gaps():
    assert [strength_of(gap) for gap in (1.0, 0.75, 0.6, 0.5, 0.3, 0.25, 0.1)] == [0, 0, 1, 1, 2, 2, 3]
    for gap in (0.0, -0.5):
        with pytest.raises(ValueError, match="positive score gap"):
            strength_of(gap)


@pytest.mark.parametrize("kwargs, message", [
    (dict(count=3, kinds=["poetry"]), "kinds must be a non-empty list"),
    (dict(count=3, kinds=[]), "kinds must be a non-empty list"),
    (dict(count=-1), "count must be a non-negative integer"),
])
def test_bad_arguments_raise_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        preference_prompts(**kwargs)
    with pytest.raises(ValueError, match="unknown preference kind 'poetry'"):
        judge("poetry", {}, "text")
