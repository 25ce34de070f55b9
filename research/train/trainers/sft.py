"""Supervised fine-tuning on conversations (`config.trainer = "sft"`).

The next-token objective of the LM trainer (research/train/trainers/lm.py) on packed conversations
in the think-then-answer chat format, with the loss on the assistant's tokens only: mean over
answer tokens of −log p(x_{t+1} | x_≤t), prompts, tags and padding weighted 0
(research/data/sft.py: sources, multi-turn, Ghost Attention). Besides the LM trainer's evaluators,
kind "tasks" measures accuracy on the task suites by generation. A run usually starts from a pretrained
one: `config.init_from = {kind: "run", path: <pretraining workdir>}`.
"""

import jax

from research.data.sft import make_sft_batches
from research.train.task import Task
from research.train.tasks_evaluator import tasks_evaluator
from research.train.trainers.lm import build_lm_task


def sft_rows(config, tokenizer, *, split: str, num_epochs: int | None, seed: int):
    """This process's packed conversation rows of `split` ("train" or "validation")."""
    return make_sft_batches(
        config.data.sft, tokenizer, split=split, batch_size=config.train.batch_size // jax.process_count(),
        seq_len=config.train.seq_len, seed=seed, process_index=jax.process_index(),
        process_count=jax.process_count(), num_epochs=num_epochs)


def build(config, mesh) -> Task:
    """The SFT Task for `config` (an LM config with `data.sft`)."""
    return build_lm_task(config, mesh, sft_rows, {
        "tasks": lambda evaluator_config, model, tokenizer: tasks_evaluator(evaluator_config, model, tokenizer,
                                                                            config.seed)})
