"""The `python` tool in the reasoning chat format: its prompt, the model's call, the tool's turn, and
the training trace that shows all three.

A conversation with the tool (research/data/reasoning.py's template; the call in the function-calling
format of research/decoding/structured/tools.py, so one schema covers a model that calls tools by
constrained decoding too):

    <|system|>You can call one of these tools ...{"name":"python",...}<|end|>\\n     tools_prompt
    <|user|>{question}<|end|>\\n<|assistant|><think>
    {thinking}</think>{"name":"python","arguments":{"code":"print(4821 * 7734)"}}<|end|>    the model
    \\n<|system|>python output:\\n37285614\\n<|end|>\\n<|assistant|><think>                 tool_turn
    {thinking}</think>37285614<|end|>                                                      the model

The chat template has no tool role, so the tool speaks in a system turn; it then reopens the assistant's
turn and its thinking, so every model turn starts exactly as the first one does and the SFT weights
(research/data/sft.py, loss on every assistant turn) cover the same tokens as a rollout's mask. A model
turn whose answer is a JSON object with a "name" is a call; anything else is the final answer. A call
that is not `python` with one string `code` gets an error as the tool's output, never an exception.

The code is untrusted: it runs only in the sandbox (research/rl/sandbox.py, its own process, limits and
namespaces), as the code of a run whose single test is `assert True`; its stdout is the tool's output, a
failure (error, timeout, memory, ...) is reported as "{status}: {detail}" after what it printed. Reserved
tags are removed from the output (a printed `<|end|>` must not end the tool's turn) and it is cut to
MAX_TOOL_OUTPUT_CHARS characters.
"""

import json
from collections.abc import Sequence

import numpy as np

from research.data.reasoning import format_prompt
from research.data.tokenizer import ASSISTANT, END_OF_TURN, END_THINK, RESERVED_TOKENS, SYSTEM, THINK
from research.decoding.structured.tools import ToolCall, format_tool_call, parse_tool_call, tools_message
from research.rl import sandbox

PYTHON_TOOL = {"name": "python", "description": "Runs Python code and returns what it prints.",
               "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}
TOOL_OUTPUT_HEADER = "python output:\n"
MAX_TOOL_OUTPUT_CHARS = 200
TRACE_CALL_THINKING = "I will compute it in python."
TRACE_ANSWER_THINKING = "The tool printed the answer."


def tools_prompt(question: str) -> str:
    """The chat prompt offering the `python` tool (a system message) before the user's `question`."""
    return format_prompt([tools_message([PYTHON_TOOL]), {"role": "user", "content": question}])


def tools_prompt_ids(tokenizer, problem) -> list[int]:
    """[bos] + `tools_prompt` of the problem's prompt."""
    return [tokenizer.bos_id] + tokenizer.encode(tools_prompt(problem.prompt))


def without_tags(text: str) -> str:
    """`text` with every reserved tag removed, repeatedly (removing one must not leave another)."""
    while any(tag in text for tag in RESERVED_TOKENS):
        for tag in RESERVED_TOKENS:
            text = text.replace(tag, "")
    return text


def tool_turn(output: str) -> str:
    """The tool's turn after a model turn that ended with a call: its cleaned, capped output in a system
    turn, then the assistant's turn and thinking reopened."""
    output = without_tags(output)
    if len(output) > MAX_TOOL_OUTPUT_CHARS:
        output = output[:MAX_TOOL_OUTPUT_CHARS] + "..."
    return f"\n{SYSTEM}{TOOL_OUTPUT_HEADER}{output}{END_OF_TURN}\n{ASSISTANT}{THINK}"


def requested_call(answer: str) -> ToolCall | str | None:
    """What a model turn's `answer` asks: None for a final answer (not a JSON object with a "name"),
    the call for a usable `python` call, else the error message the tool answers with."""
    try:
        value = json.loads(answer)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or "name" not in value:
        return None
    try:
        call = parse_tool_call(value)
    except ValueError:
        return 'error: a tool call is {"name": ..., "arguments": {...}}'
    if call.name != PYTHON_TOOL["name"]:
        return f"error: unknown tool {str(call.name)[:40]!r}; the only tool is 'python'"
    if set(call.arguments) != {"code"} or not isinstance(call.arguments["code"], str):
        return 'error: python takes {"code": "<program>"}'
    return call


def sandbox_output(result: sandbox.SandboxResult) -> str:
    """The tool's output for one sandbox run: what it printed, then why it failed if it did."""
    return result.stdout if result.passed else f"{result.stdout}{result.status}: {result.detail}"


def run_python(programs: Sequence[str], *, timeout_s: float = 2.0, memory_mb: int = 256) -> list[str]:
    """The tool's output for each program, run in parallel in the sandbox (never in this process)."""
    results = sandbox.run_many([(program, "assert True") for program in programs], timeout_s=timeout_s,
                               memory_mb=memory_mb)
    return [sandbox_output(result) for result in results]


def tool_trace(problem) -> list[tuple[str, bool]]:
    """The SFT trace of a problem with a `program` (research/data/tasks/tool_tasks.py) after its
    `tools_prompt`: (text, written by the model) segments: the call, the tool's turn with the
    program's output (the answer and a newline), the final answer."""
    call = format_tool_call(ToolCall(PYTHON_TOOL["name"], {"code": problem.inputs["program"]}))
    return [(f"{TRACE_CALL_THINKING}{END_THINK}{call}{END_OF_TURN}", True),
            (tool_turn(f"{problem.answer}\n"), False),
            (f"{TRACE_ANSWER_THINKING}{END_THINK}{problem.answer}{END_OF_TURN}", True)]


def trace_ids(tokenizer, prompt_ids: Sequence[int], segments: Sequence[tuple[str, bool]]):
    """(token ids `[T]`, model mask `[T]` bool) of a prompt followed by trace segments, each segment
    encoded on its own as a rollout appends it."""
    ids, mask = list(prompt_ids), [False] * len(prompt_ids)
    for text, by_model in segments:
        encoded = tokenizer.encode(text)
        ids += encoded
        mask += [by_model] * len(encoded)
    return np.asarray(ids, np.int32), np.asarray(mask, bool)
