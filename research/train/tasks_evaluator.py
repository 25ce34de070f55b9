"""The evaluator of kind "tasks": accuracy on procedural problems by generation (research/rl/task_eval.py).

    evals.<name> = {kind: "tasks", suites, split ("train" or "held_out"), count, seed, samples (k),
                    temperature, max_new_tokens, every}

logs `<name>_pass@1`, `<name>_pass@k`, `<name>_maj@k`, `<name>_mean_length` and `<name>_format_rate`.
Problems are drawn with their own `seed`, apart from a training stream drawn with another.
"""

import jax

from research.data.tasks import generate_problems
from research.rl.task_eval import task_accuracy
from research.train.evaluators import Evaluator


def tasks_evaluator(evaluator_config, model, tokenizer, seed: int, params_of=lambda params: params) -> Evaluator:
    """Accuracy on `count` problems of each of `suites` from `split` (research/rl/task_eval.py);
    `params_of` picks the decoder's parameters out of the train state's."""
    problems = [p for suite in evaluator_config.suites
                for p in generate_problems(suite, evaluator_config.split, evaluator_config.count, evaluator_config.seed)]
    run = task_accuracy(model, tokenizer, problems, samples=evaluator_config.samples,
                        temperature=evaluator_config.temperature, max_new_tokens=evaluator_config.max_new_tokens,
                        rng=jax.random.key(seed))
    return Evaluator(evaluator_config.every, lambda params: run(params_of(params)))
