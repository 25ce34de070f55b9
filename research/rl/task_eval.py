"""Accuracy on verifiable tasks by generation: pass@1, pass@k, maj@k and response length.

Each problem (research/data/tasks) is asked in the think-then-answer format (research/data/reasoning.py)
and answered k times (k = `samples`; one greedy answer when k = 1 at temperature 0); every answer is
judged by the suite's verifier (research/rl/verifiers). With c of the k answers correct:

    pass@1 = mean over problems of c / k
    pass@k = mean over problems of [c ≥ 1]
    maj@k  = mean over problems of [the most frequent answer (by its normalised text) is correct]

(the unbiased estimators of Chen et al. (2021) for n = k). `mean_length` is the mean number of
response tokens, `format_rate` the share of well-formed responses.
"""

from collections import Counter

import jax
import numpy as np

from research.data.reasoning import format_prompt, parse_completion, stop_ids
from research.decoding.sampling import generate
from research.rl.verifiers import problem_score


def prompt_ids(tokenizer, problem) -> list[int]:
    """[bos] + the problem asked as one user turn, the assistant's `<think>` opened."""
    return [tokenizer.bos_id] + tokenizer.encode(format_prompt(problem.prompt))


def majority_correct(answers: list[str], correct: list[bool]) -> bool:
    """Whether the most frequent answer (whitespace-normalised; ties broken by first appearance) is correct."""
    keys = [" ".join(answer.split()) for answer in answers]
    top = Counter(keys).most_common(1)[0][0]
    return correct[keys.index(top)]


def task_accuracy(model, tokenizer, problems, *, samples: int = 1, temperature: float = 0.0,
                  max_new_tokens: int = 128, batch_size: int = 64, rng=None):
    """`run(params) -> {pass@1, pass@k, maj@k, mean_length, format_rate}` on `problems` (see the module
    docstring); prompts are decoded `batch_size` rows at a time."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    prompts = [prompt_ids(tokenizer, problem) for problem in problems for _ in range(samples)]
    rng = jax.random.key(0) if rng is None else rng

    def run(params) -> dict:
        responses = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            tokens = np.asarray(generate(model, params, chunk, max_new_tokens=max_new_tokens, temperature=temperature,
                                         rng=jax.random.fold_in(rng, start), eos_id=stop_ids(tokenizer),
                                         pad_id=tokenizer.pad_id))
            responses += [row[len(prompt):len(prompt) + max_new_tokens] for row, prompt in zip(tokens, chunk)]
        parsed = [parse_completion(tokenizer, response) for response in responses]
        lengths = [response_length(response, tokenizer) for response in responses]
        correct = [problem_score(problems[i // samples], p.answer).correct for i, p in enumerate(parsed)]
        per_problem = [slice(i * samples, (i + 1) * samples) for i in range(len(problems))]
        return {
            "pass@1": float(np.mean(correct)),
            f"pass@{samples}": float(np.mean([any(correct[s]) for s in per_problem])),
            f"maj@{samples}": float(np.mean([majority_correct([p.answer for p in parsed[s]], correct[s])
                                            for s in per_problem])),
            "mean_length": float(np.mean(lengths)),
            "format_rate": float(np.mean([p.well_formed for p in parsed])),
        }

    return run


def response_length(response, tokenizer) -> int:
    """Tokens of a response up to and including its first stop id (all of them without one)."""
    stops = np.flatnonzero(np.isin(response, stop_ids(tokenizer)))
    return int(stops[0] + 1) if stops.size else len(response)
