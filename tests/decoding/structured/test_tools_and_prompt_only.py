"""research/decoding/structured/tools.py and prompt_only.py: tool calls under the constraint in the
reasoning chat format, and the prompt-only baseline's prompt and parser."""

import jax
import jsonschema
import pytest

from research.data.reasoning import format_example, parse_response
from research.decoding.structured import call_tools, generate_json, tool_call_schema
from research.decoding.structured.prompt_only import first_json_value, schema_prompt
from research.decoding.structured.tools import ToolCall, format_tool_call, parse_tool_call, tool_prompt

TOOLS = [
    {"name": "weather", "description": "Weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                         "unit": {"enum": ["C", "F"]}}, "required": ["city", "unit"]}},
    {"name": "add", "description": "Adds two integers", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}},
]


def test_random_model_calls_a_listed_tool_with_valid_arguments(random_model, byte_tokenizer, tmp_path):
    model, params = random_model
    calls = call_tools(model, params, byte_tokenizer, TOOLS, ["What is 2 + 3?", "Weather in Oslo?"],
                       max_new_tokens=64, temperature=1.0, rng=jax.random.key(2), cache_dir=str(tmp_path))
    schemas = {tool["name"]: tool["parameters"] for tool in TOOLS}
    for call in calls:
        assert isinstance(call, ToolCall) and call.name in schemas
        jsonschema.validate(call.arguments, schemas[call.name])


def test_the_chat_format_carries_the_tools_and_the_call():
    call = ToolCall("add", {"a": 2, "b": 3})
    prompt = tool_prompt("What is 2 + 3?", TOOLS)
    assert '"name":"weather"' in prompt and prompt.endswith("<|assistant|><think></think>")
    example = format_example("What is 2 + 3?", "add them", format_tool_call(call))
    answer = parse_response(example.split("<|assistant|>")[1]).answer
    assert parse_tool_call(first_json_value(answer)) == call
    jsonschema.validate({"name": "add", "arguments": {"a": 1, "b": 2}}, tool_call_schema(TOOLS))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "add", "arguments": {"city": "x", "unit": "C"}}, tool_call_schema(TOOLS))


@pytest.mark.parametrize("tools, message", [
    ([], "at least one tool"),
    ([TOOLS[0], TOOLS[0]], "unique non-empty string name"),
    ([{"name": "x", "parameters": "no"}], "parameters must be a JSON Schema object"),
])
def test_bad_tool_lists_are_refused(tools, message):
    with pytest.raises(ValueError, match=message):
        tool_call_schema(tools)


def test_prompt_only_describes_the_schema_and_parses_the_first_value(random_model, byte_tokenizer):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    prompt = schema_prompt(schema, "Text: seven\nJSON: ", examples=[("Text: two\nJSON: ", {"n": 2})])
    assert prompt.splitlines() == ["Answer with one JSON document that follows this JSON Schema:",
                                   '{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}',
                                   'Text: two', 'JSON: {"n":2}', "Text: seven", "JSON: "]
    assert first_json_value('noise {"n": 1} [2]') == {"n": 1}
    assert first_json_value("{broken [1, 2] x") == [1, 2]
    assert first_json_value("none here {") is None
    model, params = random_model
    values = generate_json(model, params, byte_tokenizer, schema, ["Text: seven\nJSON: "], max_new_tokens=8,
                           constrained=False)
    assert len(values) == 1  # a random model's free text: parsed if it holds a value, else None
