"""JSON Schema → the regular language of the JSON documents it accepts (regex.py nodes).

Supported (anything else raises SchemaError naming the keyword and its JSON path):

- object: `properties` (written in declared order), `required`, `additionalProperties`
  (false; true is accepted but extra properties are never generated);
- string: `enum`, `const`, `pattern` (pattern.py), `minLength`/`maxLength` (in code points),
  `format` date, date-time, email, uuid (formats.py); one of pattern, format, lengths;
- integer and number: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`
  (number_language.py; numbers only with integer inclusive bounds: others are not expressible);
- boolean, null, `type` lists; array: `items`, `minItems`, `maxItems`;
- `anyOf`, `oneOf` (its branches must be disjoint languages, checked on their DFAs),
  `$defs`/`definitions` with local `$ref`s, not recursive; annotations (title, description, ...).

Layout: between tokens at most `whitespace` bytes of space or newline (a bound, so a model
cannot loop on whitespace):

    object  {W ("k":W V W ("," W "k":W V W)*)? }     (members in declared order; optional ones may be missing)
    array   [W (V W ("," W V W)*)? ]
    string  " JSON characters " : unescaped UTF-8 except " \\ and controls, \\" \\\\ \\/ \\b \\f \\n \\r \\t,
            \\uXXXX outside the surrogates (so one escape is one code point)

where W = [ \\n]{0,whitespace}, and "k":W stands for "k" W : W.
"""

import json
import math

from research.decoding.structured.dfa import compile_regex, intersect
from research.decoding.structured.formats import FORMATS
from research.decoding.structured.number_language import integer_bounds, integer_language, number_language
from research.decoding.structured.pattern import pattern_language
from research.decoding.structured.regex import (EPSILON, HEX_DIGIT, Repeat, alt, byte_range, byte_set,
                                                code_point_ranges, literal, optional, seq)

DEFAULT_WHITESPACE = 2
ANNOTATIONS = frozenset({"title", "description", "$schema", "$id", "$comment", "examples", "default", "deprecated",
                         "readOnly", "writeOnly"})
TYPE_KEYWORDS = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "boolean": set(),
    "null": set(),
}
GENERAL_KEYWORDS = {"type", "enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions"}
SUPPORTED_KEYWORDS = frozenset(GENERAL_KEYWORDS | ANNOTATIONS | set().union(*TYPE_KEYWORDS.values()))

UNESCAPED = code_point_ranges([(0x20, 0x21), (0x23, 0x5B), (0x5D, 0x10FFFF)])
NON_SURROGATE_HEX4 = alt(seq(byte_set("0123456789abcefABCEF"), Repeat(HEX_DIGIT, 3, 3)),
                         seq(byte_set("dD"), byte_range(ord("0"), ord("7")), Repeat(HEX_DIGIT, 2, 2)))
JSON_CHARACTER = alt(UNESCAPED, seq(literal("\\"), byte_set('"\\/bfnrt')), seq(literal("\\u"), NON_SURROGATE_HEX4))


class SchemaError(ValueError):
    """A schema that is invalid or uses what this module does not support; the message names
    the keyword and its JSON path."""


def _is_type(value, type_name: str) -> bool:
    """Whether the JSON value `value` is an instance of the JSON Schema type `type_name`."""
    if type_name == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    checks = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if type_name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, checks[type_name])


class _Translator:
    """Walks a schema; `root` resolves `$ref`s, `active_refs` holds those being expanded."""

    def __init__(self, root, whitespace: int):
        self.root = root
        self.space = Repeat(byte_set(" \n"), 0, whitespace) if whitespace else EPSILON
        self.active_refs = []

    def language(self, schema, path: str):
        if isinstance(schema, bool):
            raise SchemaError(f"boolean schema {str(schema).lower()} at {path} is not supported "
                              "(true accepts any JSON value, which is not a regular language)")
        if not isinstance(schema, dict):
            raise SchemaError(f"schema at {path} must be an object, got {type(schema).__name__}")
        for keyword in schema:
            if keyword not in SUPPORTED_KEYWORDS:
                raise SchemaError(f"unsupported keyword {keyword!r} at {path}")
        for defs in ("$defs", "definitions"):
            if defs in schema and not isinstance(schema[defs], dict):
                raise SchemaError(f"{defs} at {path} must be an object")
        meaningful = set(schema) - ANNOTATIONS - {"$defs", "definitions"}
        for keyword in ("$ref", "anyOf", "oneOf"):
            if keyword in schema:
                others = meaningful - {keyword}
                if others:
                    raise SchemaError(f"{keyword} at {path} beside {sorted(others)} is not supported")
                return getattr(self, {"$ref": "reference", "anyOf": "any_of", "oneOf": "one_of"}[keyword])(
                    schema[keyword], path)
        types = self.types(schema, path)
        if "enum" in schema or "const" in schema:
            return self.constants(schema, types, meaningful, path)
        for keyword in meaningful - {"type"}:
            if not any(keyword in TYPE_KEYWORDS[t] for t in types):
                raise SchemaError(f"keyword {keyword!r} at {path} does not apply to type {types}")
        return alt(*(getattr(self, f"{t}_language")(schema, path) for t in types))

    def types(self, schema, path: str) -> list[str]:
        declared = schema.get("type")
        if declared is None:
            inferred = [t for t, keywords in TYPE_KEYWORDS.items() if t != "number" and keywords & set(schema)]
            if "enum" in schema or "const" in schema:
                return list(TYPE_KEYWORDS)
            if len(inferred) != 1:
                raise SchemaError(f"schema at {path} needs a 'type' (or enum, const, anyOf, oneOf, $ref): "
                                  "any JSON value is not a regular language")
            return inferred
        names = [declared] if isinstance(declared, str) else declared
        if not isinstance(names, list) or not names or any(n not in TYPE_KEYWORDS for n in names):
            raise SchemaError(f"type at {path} must be one of {list(TYPE_KEYWORDS)} or a list of them, "
                              f"got {declared!r}")
        return list(dict.fromkeys(names))

    def reference(self, ref, path: str):
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"$ref at {path} must be a local reference '#/...', got {ref!r}")
        if ref in self.active_refs:
            raise SchemaError(f"recursive $ref {ref!r} at {path} (through {self.active_refs}): "
                              "a recursive schema is not a regular language")
        target = self.root
        for part in [p.replace("~1", "/").replace("~0", "~") for p in ref[1:].split("/") if p]:
            if not isinstance(target, dict) or part not in target:
                raise SchemaError(f"$ref {ref!r} at {path} points to nothing")
            target = target[part]
        self.active_refs.append(ref)
        try:
            return self.language(target, f"{path}.$ref({ref})")
        finally:
            self.active_refs.pop()

    def branches(self, keyword: str, branches, path: str) -> list:
        if not isinstance(branches, list) or not branches:
            raise SchemaError(f"{keyword} at {path} must be a non-empty list of schemas")
        return [self.language(branch, f"{path}.{keyword}[{i}]") for i, branch in enumerate(branches)]

    def any_of(self, branches, path: str):
        return alt(*self.branches("anyOf", branches, path))

    def one_of(self, branches, path: str):
        """The union of the branches, which must be disjoint: a document two branches accept fails oneOf."""
        languages = self.branches("oneOf", branches, path)
        automata = [compile_regex(language) for language in languages]
        for i in range(len(automata)):
            for j in range(i + 1, len(automata)):
                if intersect(automata[i], automata[j]):
                    raise SchemaError(f"oneOf at {path}: branches {i} and {j} accept a common document, which "
                                      "oneOf rejects; make them disjoint or use anyOf")
        return alt(*languages)

    def constants(self, schema, types: list[str], meaningful: set, path: str):
        others = meaningful - {"type", "enum", "const"}
        if others:
            raise SchemaError(f"enum/const at {path} beside {sorted(others)} is not supported")
        if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
            raise SchemaError(f"enum at {path} must be a non-empty list")
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if "const" in schema and "enum" in schema:
            values = [v for v in values if v == schema["const"]]
        values = [v for v in values if any(_is_type(v, t) for t in types)]
        if not values:
            raise SchemaError(f"enum/const at {path}: no value is of type {types}")
        return alt(*(literal(json.dumps(v, ensure_ascii=False, separators=(",", ":"))) for v in values))

    def object_language(self, schema, path: str):
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        if not isinstance(properties, dict):
            raise SchemaError(f"properties at {path} must be an object")
        if not isinstance(required, list) or any(not isinstance(name, str) for name in required):
            raise SchemaError(f"required at {path} must be a list of property names")
        undeclared = [name for name in required if name not in properties]
        if undeclared:
            raise SchemaError(f"required at {path} names {undeclared}, which are not in properties")
        extra = schema.get("additionalProperties", False)
        if not isinstance(extra, bool):
            raise SchemaError(f"additionalProperties at {path} as a schema is not supported (only true/false)")
        members = [seq(literal(json.dumps(name, ensure_ascii=False)), self.space, literal(":"), self.space,
                       self.language(sub, f"{path}.properties.{name}"), self.space)
                   for name, sub in properties.items()]
        after_first, from_start = EPSILON, EPSILON  # members i.. with / without a member before them
        for member, name in reversed(list(zip(members, properties))):
            with_comma = seq(literal(","), self.space, member, after_first)
            if name in required:
                after_first, from_start = with_comma, seq(member, after_first)
            else:
                after_first, from_start = seq(optional(seq(literal(","), self.space, member)), after_first), \
                    alt(seq(member, after_first), from_start)
        return seq(literal("{"), self.space, from_start, literal("}"))

    def array_language(self, schema, path: str):
        if "items" not in schema:
            raise SchemaError(f"array at {path} needs 'items': any JSON value is not a regular language")
        low = self.count(schema, "minItems", path, 0)
        high = self.count(schema, "maxItems", path, None)
        if high is not None and high < low:
            raise SchemaError(f"maxItems {high} < minItems {low} at {path}")
        item = seq(self.language(schema["items"], f"{path}.items"), self.space)
        more = Repeat(seq(literal(","), self.space, item), max(low - 1, 0), None if high is None else high - 1)
        items = seq(item, more)
        return seq(literal("["), self.space, items if low else optional(items) if high != 0 else EPSILON, literal("]"))

    def count(self, schema, keyword: str, path: str, default):
        value = schema.get(keyword, default)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise SchemaError(f"{keyword} at {path} must be an int >= 0, got {value!r}")
        return value

    def string_language(self, schema, path: str):
        chosen = [k for k in ("pattern", "format") if k in schema]
        lengths = [k for k in ("minLength", "maxLength") if k in schema]
        if len(chosen) + bool(lengths) > 1:
            raise SchemaError(f"string at {path}: combining {chosen + lengths} is not supported")
        if "pattern" in schema:
            if not isinstance(schema["pattern"], str):
                raise SchemaError(f"pattern at {path} must be a string")
            try:
                body = pattern_language(schema["pattern"], JSON_CHARACTER)
            except ValueError as error:
                raise SchemaError(f"pattern at {path}: {error}") from None
        elif "format" in schema:
            if schema["format"] not in FORMATS:
                raise SchemaError(f"format {schema['format']!r} at {path} is not supported; "
                                  f"supported: {sorted(FORMATS)}")
            body = FORMATS[schema["format"]]
        else:
            low = self.count(schema, "minLength", path, 0)
            high = self.count(schema, "maxLength", path, None)
            if high is not None and high < low:
                raise SchemaError(f"maxLength {high} < minLength {low} at {path}")
            body = Repeat(JSON_CHARACTER, low, high)
        return seq(literal('"'), body, literal('"'))

    def bounds(self, schema, path: str):
        values = {}
        for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            value = schema.get(keyword)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise SchemaError(f"{keyword} at {path} must be a finite number, got {value!r}")
            values[keyword] = value
        return values

    def integer_language(self, schema, path: str):
        values = self.bounds(schema, path)
        low, high = integer_bounds(*values.values())
        if low is not None and high is not None and low > high:
            raise SchemaError(f"no integer lies within the bounds at {path}")
        return integer_language(low, high)

    def number_language(self, schema, path: str):
        values = self.bounds(schema, path)
        for keyword, value in values.items():
            if value is not None and (keyword.startswith("exclusive") or not float(value).is_integer()):
                raise SchemaError(f"{keyword} {value!r} at {path} is not expressible for numbers (integer "
                                  "minimum/maximum only)")
        low = None if values["minimum"] is None else int(values["minimum"])
        high = None if values["maximum"] is None else int(values["maximum"])
        if low is not None and high is not None and low > high:
            raise SchemaError(f"minimum > maximum at {path}")
        return number_language(low, high)

    def boolean_language(self, schema, path: str):
        return alt(literal("true"), literal("false"))

    def null_language(self, schema, path: str):
        return literal("null")


def schema_language(schema, *, whitespace: int = DEFAULT_WHITESPACE):
    """The regular language (regex.py node) of the documents `schema` accepts, with at most
    `whitespace` bytes of space/newline between tokens. SchemaError (a ValueError) naming the
    keyword and path of anything unsupported, invalid or recursive."""
    if not isinstance(whitespace, int) or isinstance(whitespace, bool) or whitespace < 0:
        raise ValueError(f"whitespace must be an int >= 0, got {whitespace!r}")
    return _Translator(schema, whitespace).language(schema, "$")
