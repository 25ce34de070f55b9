"""Function calling: a list of tools becomes one schema, {"name": a tool's name, "arguments":
that tool's parameters}, one anyOf branch per tool (disjoint: the names differ), generated under
the constraint and parsed to a `ToolCall`.

In the reasoning chat format (research/data/reasoning.py) the tool list is a system message
(`tools_message`) and the call is the assistant's answer (`format_tool_call`), so
`format_example(messages, reasoning, format_tool_call(call))` is a training example;
`call_tool` prompts with the thinking closed at once and writes the call until end-of-turn.
"""

import dataclasses
import json
from collections.abc import Mapping, Sequence

from research.data.reasoning import END_THINK, Messages, format_prompt, stop_ids
from research.decoding.structured.constraint import json_schema_constraint
from research.decoding.structured.generate_json import constrained_texts
from research.decoding.structured.schema_language import DEFAULT_WHITESPACE

TOOLS_HEADER = "You can call one of these tools by answering with {\"name\": ..., \"arguments\": ...}:"


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


def checked_tools(tools: Sequence[Mapping]) -> list[Mapping]:
    """`tools` as a list; ValueError naming the tool without a unique non-empty `name`, a string
    `description` or an object `parameters` (a JSON Schema)."""
    tools, names = list(tools), set()
    if not tools:
        raise ValueError("tools must hold at least one tool")
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise ValueError(f"tool {index} must be a mapping with name, description and parameters")
        name = tool.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise ValueError(f"tool {index} needs a unique non-empty string name, got {name!r}")
        names.add(name)
        if not isinstance(tool.get("description", ""), str):
            raise ValueError(f"tool {name!r}: description must be a string")
        if not isinstance(tool.get("parameters"), Mapping):
            raise ValueError(f"tool {name!r}: parameters must be a JSON Schema object")
    return tools


def tool_call_schema(tools: Sequence[Mapping]) -> dict:
    """The schema of a call to one of `tools`."""
    branches = [{"type": "object", "properties": {"name": {"const": tool["name"]}, "arguments": dict(tool["parameters"])},
                 "required": ["name", "arguments"], "additionalProperties": False} for tool in checked_tools(tools)]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def tools_message(tools: Sequence[Mapping]) -> dict:
    """A system message listing `tools` (one JSON line each)."""
    lines = [TOOLS_HEADER] + [json.dumps({"name": t["name"], "description": t.get("description", ""),
                                          "parameters": t["parameters"]}, separators=(",", ":"))
                              for t in checked_tools(tools)]
    return {"role": "system", "content": "\n".join(lines)}


def format_tool_call(call: ToolCall) -> str:
    """The answer text of a call."""
    return json.dumps({"name": call.name, "arguments": call.arguments}, separators=(",", ":"), ensure_ascii=False)


def parse_tool_call(value) -> ToolCall:
    """A parsed {"name", "arguments"} value as a ToolCall; ValueError if it has another shape."""
    if not isinstance(value, dict) or set(value) != {"name", "arguments"} or not isinstance(value["arguments"], dict):
        raise ValueError(f"a tool call is {{'name': ..., 'arguments': {{...}}}}, got {value!r}")
    return ToolCall(value["name"], value["arguments"])


def tool_prompt(messages: Messages, tools: Sequence[Mapping]) -> str:
    """The chat prompt with the tools as the first (system) message and the thinking closed."""
    conversation = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
    return format_prompt([tools_message(tools), *conversation]) + END_THINK


def call_tools(model, params, tokenizer, tools: Sequence[Mapping], conversations: Sequence[Messages], *,
               max_new_tokens: int, temperature: float = 0.0, rng=None, whitespace: int = DEFAULT_WHITESPACE,
               cache_dir: str | None = None) -> list[ToolCall]:
    """One call per conversation, written under the tool-call schema and ended by end-of-turn."""
    constraint = json_schema_constraint(tool_call_schema(tools), tokenizer, whitespace=whitespace, cache_dir=cache_dir)
    prompt_ids = [[tokenizer.bos_id] + tokenizer.encode(tool_prompt(c, tools)) for c in conversations]
    texts = constrained_texts(model, params, tokenizer, constraint, prompt_ids, max_new_tokens=max_new_tokens,
                              temperature=temperature, rng=rng, stop_ids=stop_ids(tokenizer))
    return [parse_tool_call(json.loads(text)) for text in texts]
