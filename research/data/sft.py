"""Supervised fine-tuning data: conversations in the think-then-answer chat format, loss on the answers.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str}`
ending with the assistant turn to learn; that turn may carry `"reasoning"` (its thinking). It renders
as research/data/reasoning.py lays a conversation out (earlier assistant turns show only their
answers) and the final turn as `format_example` does:

    <|system|>…<|end|>\\n <|user|>…<|end|>\\n <|assistant|>{answer}<|end|>\\n … <|user|>…<|end|>\\n
    <|assistant|><think>{reasoning}</think>{answer}<|end|>

Loss weights are read off the token ids, so they are exact for every tokenizer: a target token has
weight 1 when it is part of an assistant turn the model writes, i.e. after `<|assistant|>` (and after
the `<think>` the prompt opens) up to and including that turn's `<|end|>`; everything else (system,
user, tags, padding) has weight 0. `loss_on="last"` keeps only the final assistant turn (LLaMA-2's
Ghost Attention zeroes the loss of earlier turns), `"all"` every assistant turn.

Ghost Attention (LLaMA-2 §3.3): a synthetic multi-turn dialogue is written with a system
instruction that every assistant turn obeys; training keeps the instruction once, at the start, and
learns only the last turn, so the model must attend back to it over the turns in between.

Rows: each conversation becomes inputs x[:-1], targets x[1:], weights w[1:]; conversations that do
not fit in `seq_len + 1` tokens are skipped and counted (never cut: a cut answer teaches stopping
mid-sentence); the rest are packed first-fit into rows with segment ids (research/data/packing.py).
"""

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import grain
import numpy as np

from research.data import packing
from research.data.reasoning import format_example
from research.data.tasks import generate_problems

log = logging.getLogger(__name__)

LOSS_ON = ("last", "all")
INSTRUCTIONS = {  # Ghost Attention's system instructions, each with the rewrite an obeying answer gets
    "Wrap every answer in square brackets.": lambda answer: f"[{answer}]",
    "End every answer with ' (done)'.": lambda answer: f"{answer} (done)",
    "Start every answer with 'Answer: '.": lambda answer: f"Answer: {answer}",
}


def render(conversation: Sequence[Mapping[str, str]]) -> str:
    """The conversation's text: history as `format_prompt` shows it, then the final assistant turn."""
    if not conversation or conversation[-1].get("role") != "assistant":
        raise ValueError("a training conversation must end with the assistant turn to learn")
    last = conversation[-1]
    return format_example(list(conversation[:-1]), last.get("reasoning", ""), last["content"])


def answer_weights(ids: Sequence[int], tokenizer, *, loss_on: str = "last") -> np.ndarray:
    """Per-token weights of `ids`: 1 on the tokens of assistant turns (see the module docstring)."""
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    turns, inside, previous = [], False, None
    for position, token in enumerate(np.asarray(ids).tolist()):
        if token == tokenizer.assistant_id:
            turns.append([])
            inside = True
        elif inside and not (token == tokenizer.think_id and previous == tokenizer.assistant_id):
            turns[-1].append(position)
            inside = token != tokenizer.end_of_turn_id
        previous = token
    weights = np.zeros(len(ids), np.float32)
    for turn in turns[-1:] if loss_on == "last" else turns:
        weights[turn] = 1.0
    return weights


def ghost_attention(problems, instruction: str) -> list[dict[str, str]]:
    """A multi-turn dialogue of `problems` whose answers obey `instruction` (one of INSTRUCTIONS),
    stated once as the system message; the last turn carries its reasoning."""
    if instruction not in INSTRUCTIONS:
        raise ValueError(f"unknown Ghost Attention instruction {instruction!r}; known: {sorted(INSTRUCTIONS)}")
    obey = INSTRUCTIONS[instruction]
    conversation = [{"role": "system", "content": instruction}]
    for problem in problems:
        conversation += [{"role": "user", "content": problem.prompt},
                         {"role": "assistant", "content": obey(problem.answer)}]
    conversation[-1]["reasoning"] = problems[-1].reasoning
    return conversation


def task_conversations(sft_config, split: str) -> list[list[dict[str, str]]]:
    """Conversations from the procedural task suites' worked solutions (research/data/tasks): `count`
    problems of each of `suites` (drawn with `problem_seed`, or the next seed for the "validation"
    split: other problems of the same difficulties), `turns` problems per conversation, and with
    `ghost_attention` each conversation under one of INSTRUCTIONS (in turn)."""
    seed = sft_config.problem_seed + (split == "validation")
    problems = [p for suite in sft_config.suites for p in generate_problems(suite, "train", sft_config.count, seed)]
    problems = [problems[i] for i in np.random.default_rng(seed).permutation(len(problems))]
    turns = sft_config.turns
    conversations = []
    for start in range(0, len(problems) - turns + 1, turns):
        group = problems[start:start + turns]
        if sft_config.ghost_attention:
            instruction = list(INSTRUCTIONS)[len(conversations) % len(INSTRUCTIONS)]
            conversations.append(ghost_attention(group, instruction))
            continue
        conversation = []
        for problem in group:
            conversation += [{"role": "user", "content": problem.prompt},
                             {"role": "assistant", "content": problem.answer}]
        conversation[-1]["reasoning"] = group[-1].reasoning
        conversations.append(conversation)
    return conversations


def jsonl_conversations(path: str) -> list[list[dict[str, str]]]:
    """Conversations from a JSON-lines file, one `{"messages": [...]}` per line; ValueError naming
    the line that is not one."""
    conversations = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number} is not a JSON object with 'messages': {error}") from None
        conversations.append(messages)
    return conversations


def conversations_of(sft_config, split: str):
    """The conversations of `split` ("train" or "validation") that `sft_config.source` names:
    "tasks" or "jsonl" (`path`, with `{split}` in it)."""
    if sft_config.source == "tasks":
        return task_conversations(sft_config, split)
    if sft_config.source == "jsonl":
        return jsonl_conversations(sft_config.path.format(split=split))
    raise ValueError(f"config field data.sft.source: {sft_config.source!r} is not 'tasks' or 'jsonl'")


def training_chunks(conversations, tokenizer, seq_len: int, *, loss_on: str = "last") -> list[dict[str, np.ndarray]]:
    """Each conversation as {"inputs", "targets", "weights"} of its tokens ([bos] + text); those over
    `seq_len + 1` tokens are skipped, with a warning that counts them."""
    chunks, too_long = [], 0
    for index, conversation in enumerate(conversations):
        try:
            ids = np.asarray([tokenizer.bos_id] + tokenizer.encode(render(conversation)), np.int32)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"conversation {index}: {error}") from None
        if len(ids) > seq_len + 1:
            too_long += 1
            continue
        weights = answer_weights(ids, tokenizer, loss_on=loss_on)
        chunks.append({"inputs": ids[:-1], "targets": ids[1:], "weights": weights[1:]})
    if too_long:
        log.warning("skipped %d of %d conversations longer than seq_len + 1 = %d tokens", too_long,
                    len(conversations), seq_len + 1)
    if not chunks:
        raise ValueError(f"no conversation fits in seq_len + 1 = {seq_len + 1} tokens")
    return chunks


def make_sft_batches(sft_config, tokenizer, *, split: str, batch_size: int, seq_len: int, seed: int,
                     process_index: int = 0, process_count: int = 1, num_epochs: int | None = None):
    """A resumable iterator of packed SFT rows (the LM fields of research/data/packing.py, `weights`
    on the answers only) for process `process_index` of `process_count`, `batch_size` rows each."""
    chunks = training_chunks(conversations_of(sft_config, split), tokenizer, seq_len, loss_on=sft_config.loss_on)
    mine = chunks[process_index::process_count]
    if not mine:
        raise ValueError(f"split {split!r} has {len(chunks)} conversations, fewer than process_count={process_count}")
    ordered = grain.MapDataset.source(mine).shuffle(seed).repeat(num_epochs)
    stream = ordered.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    rows = packing.pack_rows(stream, seq_len, max(batch_size, 8), fields=("inputs", "targets", "weights"))
    if num_epochs is not None:
        rows = packing.PadRowsIterDataset(rows, row=packing.padding_row(seq_len), multiple=batch_size)
    return iter(rows.batch(batch_size))
