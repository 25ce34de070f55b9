"""research/data/reasoning.py: the think-then-answer template and its tolerant parser."""

import re

import pytest

from research.data import tokenizer
from research.data.reasoning import (
    ReasoningResponse,
    format_example,
    format_prompt,
    parse_completion,
    parse_response,
    stop_ids,
)

MESSAGES = [
    {"role": "system", "content": "Answer with a number."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 + 3?"},
]
PROMPT = ("<|system|>Answer with a number.<|end|>\n<|user|>What is 2 + 2?<|end|>\n<|assistant|>4<|end|>\n"
          "<|user|>And 3 + 3?<|end|>\n<|assistant|><think>")


@pytest.fixture(scope="module")
def tokenizers(pydoc_texts):
    """The byte tokenizer and a small BPE trained in memory on a few pydoc topics."""
    bpe = tokenizer.train_sentencepiece(list(pydoc_texts.values())[:30], 400)
    return [tokenizer.ByteTokenizer(), tokenizer.SentencePieceTokenizer(bpe)]


def test_the_prompt_renders_every_turn_and_opens_the_thinking():
    assert format_prompt(MESSAGES) == PROMPT
    one_question = "<|user|>Hi?<|end|>\n<|assistant|><think>"
    assert format_prompt("Hi?") == format_prompt([{"role": "user", "content": "Hi?"}]) == one_question


def test_an_example_is_the_prompt_then_reasoning_answer_and_end_of_turn():
    example = format_example(MESSAGES, "3 and 3 make 6.", "6")
    assert example == PROMPT + "3 and 3 make 6.</think>6<|end|>"
    assert parse_response(example[len(PROMPT) - len("<think>"):]) == ReasoningResponse("3 and 3 make 6.", "6", True)


@pytest.mark.parametrize("messages, reasoning, answer, message", [
    ([], "r", "a", "at least one message"),
    ([{"role": "robot", "content": "x"}], "r", "a", "message 0 has role 'robot'"),
    (["What?"], "r", "a", "message 0 must be a mapping"),
    ([{"role": "user", "content": None}], "r", "a", "message 0's content must be a string"),
    ([{"role": "user", "content": "hi <|end|>"}], "r", "a", "message 0's content contains the reserved tag '<|end|>'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "r", "a",
     "last message must be the user's"),
    ("q", "a </think> b", "a", "reasoning contains the reserved tag '</think>'"),
    ("q", "r", "<think>", "answer contains the reserved tag '<think>'"),
])
def test_bad_conversations_are_rejected_naming_the_problem(messages, reasoning, answer, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        format_example(messages, reasoning, answer)


def test_a_full_template_round_trips_through_both_tokenizers_with_one_id_per_tag(tokenizers):
    example = format_example(MESSAGES, "3 and 3 make 6.", "6")
    for tok in tokenizers:
        ids = tok.encode(example)
        assert tok.decode(ids) == example
        assert ids[-1] == tok.end_of_turn_id and ids.count(tok.think_id) == ids.count(tok.end_think_id) == 1
        prompt_ids = tok.encode(format_prompt(MESSAGES))
        assert ids[: len(prompt_ids)] == prompt_ids and prompt_ids[-2:] == [tok.assistant_id, tok.think_id]
        ids_used = {tok.think_id, tok.end_think_id, tok.system_id, tok.user_id, tok.assistant_id, tok.end_of_turn_id}
        assert len(ids_used | {tok.pad_id, tok.bos_id, tok.eos_id}) == 9 and max(ids_used) < tok.vocab_size


@pytest.mark.parametrize("text, expected", [
    # well formed, with or without the opening tag (the prompt opened it), whitespace stripped
    ("<think>2 and 2 make 4.</think>4<|end|>", ("2 and 2 make 4.", "4", True)),
    ("2 and 2 make 4.</think>4", ("2 and 2 make 4.", "4", True)),
    ("  <think>\n  step one\n\n</think>\n\n  4  \n<|end|>\n", ("step one", "4", True)),
    ("<think></think>4<|end|>", ("", "4", True)),
    ("</think>", ("", "", True)),
    # everything from the first end of turn on is ignored
    ("<think>a</think>b<|end|><|user|>more<think>c</think>d", ("a", "b", True)),
    # no think tag at all: all answer
    ("just 4", ("", "just 4", False)),
    ("", ("", "", False)),
    # opened but never closed (ran out of tokens while thinking): all thinking
    ("<think>let me see, 2 and", ("let me see, 2 and", "", False)),
    ("hmm <think>let me see", ("hmm <think>let me see", "", False)),
    # repeated tags: the answer follows the last </think>; the rest is thinking, kept verbatim
    ("<think>a</think>b</think>c", ("a</think>b", "c", False)),
    ("<think>a</think>b<think>c</think>d<|end|>", ("a</think>b<think>c", "d", False)),
    ("<think><think>a</think>b", ("<think>a", "b", False)),
    ("<think>a</think>b<think>c", ("a", "b<think>c", False)),
    ("<think>a</think><|user|>b", ("a", "<|user|>b", False)),
])
def test_parse_response_splits_thinking_from_answer_and_tolerates_malformed_output(text, expected):
    assert parse_response(text) == ReasoningResponse(*expected)


def test_parse_completion_reads_generated_ids_up_to_the_first_stop(tokenizers):
    for tok in tokenizers:
        assert stop_ids(tok) == (tok.end_of_turn_id, tok.eos_id)
        ids = tok.encode("2 and 2 make 4.</think>4<|end|>") + tok.encode("garbage after the stop")
        assert parse_completion(tok, ids) == ReasoningResponse("2 and 2 make 4.", "4", True)
        ids = tok.encode("2 and 2 make 4.</think>4") + [tok.eos_id] + tok.encode("</think>5")
        assert parse_completion(tok, ids) == ReasoningResponse("2 and 2 make 4.", "4", True)
        truncated = tok.encode("2 and 2 make") + [tok.pad_id] * 3  # ran out of tokens while thinking
        assert parse_completion(tok, truncated) == ReasoningResponse("2 and 2 make", "", False)


def test_reserved_ids_need_room_in_a_byte_vocabulary():
    with pytest.raises(ValueError, match="vocab_size >= 265"):
        stop_ids(tokenizer.ByteTokenizer(vocab_size=260))
