"""research/data/sft.py: conversations rendered in the chat format, loss on the answers, packing."""

import json

import numpy as np
import pytest
import ml_collections

from research.data.reasoning import format_example
from research.data.sft import INSTRUCTIONS, answer_weights, ghost_attention, make_sft_batches, render
from research.data.tasks import generate_problems
from research.data.tokenizer import ByteTokenizer

TOKENIZER = ByteTokenizer()
CONVERSATION = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning": "add"}]


def learned(conversation, loss_on):
    ids = TOKENIZER.encode(render(conversation))
    weights = answer_weights(ids, TOKENIZER, loss_on=loss_on)
    return TOKENIZER.decode([i for i, w in zip(ids, weights) if w])


def test_a_single_turn_renders_as_format_example_and_learns_reasoning_and_answer():
    conversation = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning": "add"}]
    assert render(conversation) == format_example("2+2?", "add", "4")
    assert learned(conversation, "last") == "add</think>4<|end|>"


def test_loss_covers_the_last_or_every_assistant_turn_and_nothing_else():
    assert learned(CONVERSATION, "last") == "add</think>4<|end|>"
    assert learned(CONVERSATION, "all") == "yo<|end|>add</think>4<|end|>"
    with pytest.raises(ValueError, match="loss_on must be one of"):
        answer_weights([1, 2], TOKENIZER, loss_on="first")
    with pytest.raises(ValueError, match="must end with the assistant turn"):
        render(CONVERSATION[:-1])


def test_ghost_attention_states_the_instruction_once_and_every_answer_obeys_it():
    problems = generate_problems("arithmetic", "train", 3)
    instruction = "Wrap every answer in square brackets."
    dialogue = ghost_attention(problems, instruction)
    assert [m["role"] for m in dialogue] == ["system"] + ["user", "assistant"] * 3
    assert render(dialogue).count(instruction) == 1
    assert [m["content"] for m in dialogue if m["role"] == "assistant"] == [f"[{p.answer}]" for p in problems]
    assert learned(dialogue, "last") == f"{problems[-1].reasoning}</think>[{problems[-1].answer}]<|end|>"
    with pytest.raises(ValueError, match="unknown Ghost Attention instruction"):
        ghost_attention(problems, "Be nice.")
    assert len(INSTRUCTIONS) >= 3


def sft_config(**overrides):
    fields = dict(source="tasks", suites=("arithmetic", "countdown"), count=20, problem_seed=0, turns=1,
                  ghost_attention=False, loss_on="last", path="")
    return ml_collections.ConfigDict({**fields, **overrides})


def test_packed_rows_weight_only_answer_tokens_and_keep_conversations_apart():
    rows = next(make_sft_batches(sft_config(), TOKENIZER, split="train", batch_size=4, seq_len=512, seed=0))
    assert rows["inputs"].shape == (4, 512)
    for inputs, targets, weights, segments in zip(rows["inputs"], rows["targets"], rows["weights"],
                                                  rows["segment_ids"]):
        assert segments.max() >= 1 and np.all(weights[segments == 0] == 0)
        for segment in range(1, segments.max() + 1):
            text = TOKENIZER.decode(targets[(segments == segment) & (weights > 0)])
            assert text.endswith("<|end|>") and "</think>" in text and "<|user|>" not in text
            assert TOKENIZER.decode(inputs[segments == segment]).count("<|user|>") == 1


def test_validation_problems_differ_from_training_problems_and_long_ones_are_skipped(caplog):
    train = next(make_sft_batches(sft_config(), TOKENIZER, split="train", batch_size=2, seq_len=512, seed=0))
    validation = next(make_sft_batches(sft_config(), TOKENIZER, split="validation", batch_size=2, seq_len=512,
                                       seed=0, num_epochs=1))
    assert not np.array_equal(train["inputs"], validation["inputs"])
    make_sft_batches(sft_config(), TOKENIZER, split="train", batch_size=2, seq_len=300, seed=0)
    assert "conversations longer than seq_len + 1 = 301 tokens" in caplog.text
    with pytest.raises(ValueError, match="no conversation fits in seq_len"):
        make_sft_batches(sft_config(), TOKENIZER, split="train", batch_size=2, seq_len=20, seed=0)


def test_jsonl_conversations_are_read_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    rows = next(make_sft_batches(sft_config(source="jsonl", path=str(tmp_path / "{split}.jsonl")), TOKENIZER,
                                 split="train", batch_size=1, seq_len=128, seed=0))
    first = (rows["segment_ids"][0] == 1) & (rows["weights"][0] > 0)
    assert TOKENIZER.decode(rows["targets"][0][first]) == "add</think>4<|end|>"
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"train.jsonl:2 is not a JSON object with 'messages'"):
        make_sft_batches(sft_config(source="jsonl", path=str(tmp_path / "{split}.jsonl")), TOKENIZER,
                         split="train", batch_size=1, seq_len=128, seed=0)
