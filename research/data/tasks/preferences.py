"""Offline preference data with verifiable judges, for reward models, DPO and PPO.

Each prompt (research/data/tasks/preference_tasks.py: arithmetic, string, format;
research/data/tasks/safety.py: safety) comes with several candidate responses of
varying quality and a judge that scores any response in [0, 1] from the prompt's `spec`.
Every two candidates with different scores make a pair, the higher-scored one chosen;
the score gap g = s_chosen − s_rejected > 0 gives LLaMA-2's preference strength:

    g ≥ 0.75: 0 "significantly better"     0.5 ≤ g < 0.75: 1 "better"
    0.25 ≤ g < 0.5: 2 "slightly better"    0 < g < 0.25: 3 "negligibly better / unsure"

(the index orders the margins of the LLaMA-2 ranking loss, largest first). Candidates
with equal scores make no pair, and neither do identical texts. Safety pairs carry
`unsafe`, whether the request was unsafe, so LLaMA-2's reward combination (safety reward
for unsafe prompts) has its label.

Prompt i of `seed` is drawn from `random.Random("preferences/{seed}/{i}")`, its kind
cycling through `kinds`, so the data is deterministic and prefix-stable.
"""

import dataclasses
import functools
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from research.data.tasks import preference_tasks, safety

STRENGTHS = ("significantly better", "better", "slightly better", "negligibly better / unsure")
STRENGTH_THRESHOLDS = (0.75, 0.5, 0.25)  # lowest gap of strengths 0, 1, 2; strength 3 below


@dataclasses.dataclass(frozen=True)
class PreferencePrompt:
    """A prompt, what its judge needs (`spec`), and its (intended grade, response) candidates."""

    id: str
    kind: str
    prompt: str
    spec: Mapping[str, Any]
    candidates: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """`chosen` is preferred to `rejected` for `prompt` by the judge, with `strength`
    (an index into STRENGTHS) from the score gap."""

    prompt_id: str
    kind: str
    prompt: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    strength: int
    unsafe: bool = False

    @property
    def strength_name(self) -> str:
        return STRENGTHS[self.strength]


JUDGES: dict[str, Callable[[Mapping[str, Any], str], float]] = {
    "arithmetic": preference_tasks.judge_arithmetic,
    "string": preference_tasks.judge_string,
    "format": preference_tasks.judge_format,
    "safety": safety.judge_safety,
}
KINDS = tuple(JUDGES)


def _makers(seed: int) -> dict[str, Callable]:
    """kind -> make(rng) -> (prompt, spec, candidates); safety topics depend on `seed`."""
    return {
        "arithmetic": preference_tasks.make_arithmetic,
        "string": preference_tasks.make_string,
        "format": preference_tasks.make_format,
        "safety": functools.partial(safety.make_safety, seed=seed),
    }


def judge(kind: str, spec: Mapping[str, Any], response: str) -> float:
    """The judge of `kind` scoring `response` for a prompt with `spec`, in [0, 1]; 0 for a
    response that is not a string. ValueError naming an unknown kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown preference kind {kind!r}; known kinds: {list(KINDS)}")
    if not isinstance(response, str):
        return 0.0
    return float(JUDGES[kind](spec, response))


def strength_of(gap: float) -> int:
    """The strength index of a positive score gap (module docstring); ValueError otherwise."""
    if not gap > 0:
        raise ValueError(f"a preference needs a positive score gap, got {gap!r}")
    return next((index for index, low in enumerate(STRENGTH_THRESHOLDS) if gap >= low), len(STRENGTH_THRESHOLDS))


def preference_prompts(count: int, seed: int = 0, kinds: Sequence[str] = KINDS) -> list[PreferencePrompt]:
    """Prompts 0..count-1 of `seed`, kinds cycling through `kinds`; ValueError for an
    unknown kind or a negative count."""
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty list of {list(KINDS)}, got {list(kinds)!r}")
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    makers = _makers(seed)
    prompts = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        prompt, spec, candidates = makers[kind](random.Random(f"preferences/{seed}/{index}"))
        prompts.append(PreferencePrompt(f"preferences/{seed}/{index}", kind, prompt, spec, tuple(candidates)))
    return prompts


def pairs_of(prompt: PreferencePrompt) -> list[PreferencePair]:
    """Every judge-ordered pair of `prompt`'s distinct candidates with different scores."""
    responses = list(dict.fromkeys(response for _, response in prompt.candidates))
    scores = [judge(prompt.kind, prompt.spec, response) for response in responses]
    pairs = []
    for (a, score_a), (b, score_b) in itertools.combinations(zip(responses, scores), 2):
        if score_a == score_b:
            continue
        (chosen, high), (rejected, low) = sorted([(a, score_a), (b, score_b)], key=lambda item: -item[1])
        pairs.append(PreferencePair(prompt.id, prompt.kind, prompt.prompt, chosen, rejected, high, low,
                                    strength_of(high - low), bool(prompt.spec.get("unsafe", False))))
    return pairs


def preference_pairs(count: int, seed: int = 0, kinds: Sequence[str] = KINDS) -> list[PreferencePair]:
    """The pairs of `preference_prompts(count, seed, kinds)`, prompt by prompt (each checked)."""
    pairs = [pair for prompt in preference_prompts(count, seed, kinds) for pair in pairs_of(prompt)]
    check_pairs(pairs)
    return pairs


def check_pairs(pairs: Sequence[PreferencePair]) -> None:
    """ValueError naming the first pair whose chosen and rejected are identical, whose
    chosen does not score higher, or whose strength disagrees with its gap."""
    for index, pair in enumerate(pairs):
        where = f"pair {index} (prompt {pair.prompt_id!r})"
        if pair.chosen == pair.rejected:
            raise ValueError(f"{where} has identical chosen and rejected responses")
        if not pair.chosen_score > pair.rejected_score:
            raise ValueError(f"{where}: chosen scores {pair.chosen_score}, not above rejected {pair.rejected_score}")
        if pair.strength != strength_of(pair.chosen_score - pair.rejected_score):
            raise ValueError(f"{where}: strength {pair.strength} does not match the score gap "
                             f"{pair.chosen_score - pair.rejected_score:.3f}")
