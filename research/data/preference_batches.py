"""Preference pairs as token batches for reward models and direct preference optimisation.

Each pair (research/data/tasks/preferences.py) becomes two sequences, the prompt asked as one user
turn and each response as the assistant's answer (research/data/reasoning.py `format_example`, empty
thinking): `[bos] + <|user|>prompt<|end|>\\n<|assistant|><think></think>response<|end|>`. Rows:

    chosen, rejected            int32 `[seq_len]`, right-padded with pad_id
    chosen_length, rejected_length   the sequences' lengths (the reward is read at the last token)
    prompt_length               tokens of the shared prompt, up to and including `<think>`
    strength                    LLaMA-2's preference strength, 0 "significantly better" .. 3 "negligibly"
    unsafe                      1 when the prompt asked for banned content

Pairs with a sequence over `seq_len` tokens are skipped with a warning that counts them.
"""

import logging

import grain
import numpy as np

from research.data.reasoning import format_example, format_prompt
from research.data.tasks.preferences import check_pairs, preference_pairs

log = logging.getLogger(__name__)

FIELDS = ("chosen", "rejected", "chosen_length", "rejected_length", "prompt_length", "strength", "unsafe")


def pair_row(pair, tokenizer, seq_len: int) -> dict[str, np.ndarray] | None:
    """One pair's row, or None when a sequence does not fit in `seq_len` tokens."""
    prompt = [tokenizer.bos_id] + tokenizer.encode(format_prompt(pair.prompt))
    sequences = [[tokenizer.bos_id] + tokenizer.encode(format_example(pair.prompt, "", response))
                 for response in (pair.chosen, pair.rejected)]
    if max(map(len, sequences)) > seq_len:
        return None
    row = {"prompt_length": np.int32(len(prompt)), "strength": np.int32(pair.strength),
           "unsafe": np.int32(pair.unsafe)}
    for name, ids in zip(("chosen", "rejected"), sequences):
        padded = np.full(seq_len, tokenizer.pad_id, np.int32)
        padded[:len(ids)] = ids
        row[name], row[f"{name}_length"] = padded, np.int32(len(ids))
    return row


def preference_rows(preference_config, tokenizer, seq_len: int, split: str) -> list[dict[str, np.ndarray]]:
    """The rows of `count` prompts' pairs of `kinds`; split "train" draws with `seed`, "validation"
    with `seed + 1` (other prompts)."""
    seed = preference_config.seed + (split == "validation")
    pairs = preference_pairs(preference_config.count, seed, tuple(preference_config.kinds))
    check_pairs(pairs)
    rows = [row for row in (pair_row(pair, tokenizer, seq_len) for pair in pairs) if row is not None]
    if len(rows) < len(pairs):
        log.warning("skipped %d of %d preference pairs longer than seq_len = %d tokens", len(pairs) - len(rows),
                    len(pairs), seq_len)
    if not rows:
        raise ValueError(f"no preference pair fits in seq_len = {seq_len} tokens")
    return rows


def make_preference_batches(preference_config, tokenizer, *, split: str, batch_size: int, seq_len: int, seed: int,
                            process_index: int = 0, process_count: int = 1, num_epochs: int | None = None):
    """A resumable iterator of this process's batches of `batch_size` pair rows, shuffled by `seed`
    each epoch (the last partial batch of a finite pass is dropped)."""
    rows = preference_rows(preference_config, tokenizer, seq_len, split)[process_index::process_count]
    ordered = grain.MapDataset.source(rows).shuffle(seed).repeat(num_epochs)
    stream = ordered.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    return iter(stream.batch(batch_size, drop_remainder=True))
