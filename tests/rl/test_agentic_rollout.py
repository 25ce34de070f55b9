"""research/rl/agentic_rollout.py and tool_calls.py: multi-turn rollouts with the python tool, their
masks, turn limit, tool errors, and the sandbox as the only place model code runs."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.data.reasoning import stop_ids
from research.data.sft import answer_weights
from research.data.tasks import generate_problems
from research.data.tokenizer import END_OF_TURN, END_THINK, ByteTokenizer
from research.decoding.sampling import generate
from research.models import make_model
from research.rl import sandbox
from research.rl.agentic_rollout import episodes_rollout, play, policy_turns
from research.rl.tool_calls import (MAX_TOOL_OUTPUT_CHARS, requested_call, run_python, tool_trace, tool_turn,
                                    tools_prompt_ids, trace_ids)

TOKENIZER = ByteTokenizer(vocab_size=265)


def call(code: str, thinking: str = "run it") -> str:
    return f"{thinking}{END_THINK}{json.dumps({'name': 'python', 'arguments': {'code': code}})}{END_OF_TURN}"


def answer(text: str, thinking: str = "done") -> str:
    return f"{thinking}{END_THINK}{text}{END_OF_TURN}"


def prompt_of(question: str) -> list[int]:
    return TOKENIZER.encode(f"{question}<|end|>\n<|assistant|><think>")


def scripted(scripts: dict[str, list[str]]):
    """A stub policy: the row asked question `key` writes scripts[key]'s turns in order (cut to the room);
    how many turns each was asked for is counted."""
    prompts = {tuple(prompt_of(key)): key for key in scripts}
    asked = {key: 0 for key in scripts}

    def sample(sequences, rooms):
        turns = []
        for sequence, room in zip(sequences, rooms):
            key = next(key for prefix, key in prompts.items() if tuple(sequence[:len(prefix)]) == prefix)
            turns.append(TOKENIZER.encode(scripts[key][asked[key]])[:room])
            asked[key] += 1
        return turns

    return sample, asked


def echo_tools(log):
    """Stand-in tool runner (no sandbox): 'ran <program>' for each program, each batch logged."""
    def run(programs):
        log.append(list(programs))
        return [f"ran {program}" for program in programs]
    return run


def test_the_mask_covers_exactly_the_models_tokens_across_turns():
    scripts = {"A": [call("print(6 * 7)"), answer("42")], "B": [answer("7")]}
    sample, _ = scripted(scripts)
    batches = []
    episodes = play(sample, TOKENIZER, [prompt_of(key) for key in scripts], max_length=400, max_tool_turns=2,
                    run_tools=echo_tools(batches))
    first, second = episodes
    tokens, mask = np.asarray(first.tokens), np.asarray(first.model_mask)
    assert TOKENIZER.decode(tokens[mask]) == call("print(6 * 7)") + answer("42")
    assert TOKENIZER.decode(tokens[~mask]) == TOKENIZER.decode(prompt_of("A")) + tool_turn("ran print(6 * 7)")
    assert TOKENIZER.decode(first.final_turn) == answer("42")
    assert (first.tool_calls, first.truncated, second.tool_calls, second.truncated) == (1, False, 0, False)
    assert TOKENIZER.decode(np.asarray(second.tokens)[np.asarray(second.model_mask)]) == answer("7")
    assert batches == [["print(6 * 7)"]]
    # the SFT weights of the chat format (loss on every assistant turn) cover the same tokens
    np.testing.assert_array_equal(answer_weights(first.tokens, TOKENIZER, loss_on="all"), mask)


def test_the_turn_limit_holds_and_a_call_past_it_is_the_final_answer():
    sample, asked = scripted({"loop": [call(f"print({i})") for i in range(10)]})
    batches = []
    (episode,) = play(sample, TOKENIZER, [prompt_of("loop")], max_length=2000, max_tool_turns=3,
                      run_tools=echo_tools(batches))
    assert episode.tool_calls == 3 and asked["loop"] == 4
    assert batches == [["print(0)"], ["print(1)"], ["print(2)"]]
    assert TOKENIZER.decode(episode.final_turn) == call("print(3)") and not episode.truncated
    (direct,) = play(scripted({"x": [call("print(1)")]})[0], TOKENIZER, [prompt_of("x")],
                     max_length=200, max_tool_turns=0, run_tools=echo_tools(batches := []))
    assert direct.tool_calls == 0 and batches == []


def test_rows_that_run_out_of_room_are_truncated_and_the_tokens_never_exceed_max_length():
    prompt = prompt_of("P")
    sample, _ = scripted({"P": [call("print(1)"), answer("1")]})
    room = len(prompt) + len(TOKENIZER.encode(call("print(1)"))) + 5  # the tool turn does not fit
    (episode,) = play(sample, TOKENIZER, [prompt], max_length=room, max_tool_turns=2, run_tools=echo_tools([]))
    assert episode.truncated and len(episode.tokens) == room and episode.tool_calls == 1
    (short,) = play(scripted({"P": [answer("12345678")]})[0], TOKENIZER, [prompt],
                    max_length=len(prompt) + 4, max_tool_turns=2)
    assert short.truncated and len(short.tokens) == len(prompt) + 4
    with pytest.raises(ValueError, match="prompt 0"):
        play(sample, TOKENIZER, [prompt], max_length=len(prompt), max_tool_turns=1)


def test_tool_errors_and_timeouts_become_tool_turns_never_exceptions():
    assert requested_call("42") is None and requested_call("[1, 2]") is None and requested_call("{oops") is None
    assert "unknown tool" in requested_call('{"name": "bash", "arguments": {"code": "ls"}}')
    assert "takes" in requested_call('{"name": "python", "arguments": {"code": 3}}')
    assert "tool call is" in requested_call('{"name": "python", "arguments": []}')
    scripts = {"a": [call("print(1 / 0)"), answer("?")], "b": [call("while True: pass"), answer("?")],
               "c": ['x</think>{"name": "shell", "arguments": {}}<|end|>', answer("?")],
               "d": [call("print(('<|en' + 'd|>') * 3 + 'x' * 500)"), answer("?")]}
    episodes = play(scripted(scripts)[0], TOKENIZER, [prompt_of(key) for key in scripts], max_length=1200,
                    max_tool_turns=1, run_tools=lambda programs: run_python(programs, timeout_s=1.0))
    tool_text = [TOKENIZER.decode(np.asarray(e.tokens)[~np.asarray(e.model_mask)][len(prompt_of("a")):])
                 for e in episodes]
    assert "error: code: ZeroDivisionError" in tool_text[0]
    assert "timeout" in tool_text[1]
    assert "unknown tool 'shell'" in tool_text[2]
    assert tool_text[3] == tool_turn("x" * 500) and tool_text[3].count("<|end|>") == 1
    assert "x" * MAX_TOOL_OUTPUT_CHARS + "...<|end|>" in tool_text[3] and "x" * (MAX_TOOL_OUTPUT_CHARS + 1) not in tool_text[3]
    assert all(e.tool_calls == 1 and TOKENIZER.decode(e.final_turn) == answer("?") for e in episodes)


def test_model_code_runs_only_in_the_sandbox(tmp_path, monkeypatch):
    marker = tmp_path / "written_by_model_code"
    programs = [f"open({str(marker)!r}, 'w').write('x')", "import os; print(os.getpid())"]
    ran = []
    real_run_many = sandbox.run_many
    monkeypatch.setattr(sandbox, "run_many", lambda jobs, **kw: ran.append(list(jobs)) or real_run_many(jobs, **kw))
    outputs = run_python(programs)
    assert [code for code, _ in ran[0]] == programs
    assert not marker.exists() and outputs[0].startswith("error")
    assert int(outputs[1]) != __import__("os").getpid()


def test_tool_traces_print_their_answers_in_the_sandbox_and_mask_the_tool_turn():
    problems = generate_problems("tool_tasks", "train", 6, seed=0)
    assert run_python([p.inputs["program"] for p in problems]) == [p.answer + "\n" for p in problems]
    problem = problems[0]
    ids, mask = trace_ids(TOKENIZER, tools_prompt_ids(TOKENIZER, problem), tool_trace(problem))
    tool_ids = TOKENIZER.encode(tool_turn(problem.answer + "\n"))
    model_text = TOKENIZER.decode(ids[mask])
    assert model_text.endswith(f"{END_THINK}{problem.answer}{END_OF_TURN}") and problem.inputs["program"] in model_text
    assert len(ids) - mask.sum() == len(tools_prompt_ids(TOKENIZER, problem)) + len(tool_ids)


@pytest.fixture(scope="module")
def tiny_model():
    overrides = ["model.num_layers=1", "model.vocab_size=265", "data.tokenizer=byte", "model.dim=32",
                 "model.num_heads=2", "model.num_kv_heads=1", "model.hidden_dim=64"]
    model = make_model(config_lib.load("configs/llama2.py:tiny", overrides).model)
    return model, nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])


def test_policy_turns_continue_each_sequence_as_generate_does(tiny_model):
    model, params = tiny_model
    sequences = [TOKENIZER.encode("hi<|end|>"), TOKENIZER.encode("a longer one")]
    sample = policy_turns(model, params, TOKENIZER, jax.random.key(1), batch_size=3, max_length=40, turn_tokens=6,
                          temperature=0.0)
    turns = sample(sequences, [6, 3])
    expected = np.asarray(generate(model, params, sequences, max_new_tokens=6, eos_id=stop_ids(TOKENIZER)))
    for turn, sequence, row, room in zip(turns, sequences, expected, [6, 3]):
        reference = row[len(sequence):len(sequence) + room].tolist()
        stops = [i for i, token in enumerate(reference) if token in stop_ids(TOKENIZER)]
        assert turn == reference[:stops[0] + 1 if stops else room]


def test_the_rollout_of_episodes_scores_only_the_models_tokens(tiny_model):
    model, params = tiny_model
    scripts = {"A": [call("print(2)"), answer("2")], "B": [answer("7")]}
    episodes = play(scripted(scripts)[0], TOKENIZER, [prompt_of(key) for key in scripts], max_length=200,
                    max_tool_turns=1, run_tools=echo_tools([]))
    rollout = episodes_rollout(model, params, episodes, length=200, pad_id=0, reference_params=params)
    mask = np.asarray(rollout.response_mask)
    assert rollout.tokens.shape == (2, 200)
    for row, episode in enumerate(episodes):
        np.testing.assert_array_equal(mask[row, :len(episode.tokens)], episode.model_mask)
        assert not mask[row, len(episode.tokens):].any()
    log_probs = np.asarray(rollout.log_probs)
    assert np.all(log_probs[~mask] == 0) and np.all(log_probs[mask] < 0)
    np.testing.assert_allclose(rollout.ref_log_probs, log_probs, rtol=1e-6)
