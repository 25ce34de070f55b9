"""JSON-Schema-constrained generation: schema → regular language → byte DFA → token index →
a mask inside `generate`'s decode loop that also keeps the document finishable within the
tokens left, so every output parses and validates. Also function calling and the prompt-only
(Kor-style) baseline."""

from research.decoding.structured.constraint import TokenConstraint, json_schema_constraint
from research.decoding.structured.generate_json import generate_json
from research.decoding.structured.schema_language import SchemaError, schema_language
from research.decoding.structured.tools import ToolCall, call_tools, tool_call_schema

__all__ = ["SchemaError", "TokenConstraint", "ToolCall", "call_tools", "generate_json", "json_schema_constraint",
           "schema_language", "tool_call_schema"]
