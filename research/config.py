"""Experiment configs: load a `get_config(arg)` file, apply overrides, validate, freeze.

    config = load("configs/llama2.py:tiny", ["train.steps=100", "model.dim=128"])

`arg` (after the colon) names a variant or carries `key=value,...` pairs (`parse_arg`).
Overrides are typed by the field they replace; an unknown key names the closest real
keys. `validate` raises `ValueError` naming the offending field before anything compiles.
"""

import ast
import difflib
import importlib.util
import os
from collections.abc import Sequence

import ml_collections
from ml_collections import config_dict

from research.config_checks import validate


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `"tiny"` or `"variant=tiny,steps=10"` into a ConfigDict over `defaults`.

    A bare word sets the first default's key; values are typed like their defaults.
    """
    result = ml_collections.ConfigDict(defaults)
    if not arg:
        return result
    first_key = next(iter(defaults))
    for item in arg.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            key, value = first_key, item
        if key not in defaults:
            raise ValueError(f"config argument {key!r} is not one of {sorted(defaults)}")
        result[key] = parse_value(value, defaults[key], key)
    return result


def parse_value(text: str, current, field: str):
    """Converts the override text `text` to the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{field}={text!r}: expected a boolean")
    if isinstance(current, str):
        return text
    if text == "None":
        return None
    if isinstance(current, float) and text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(text)  # parsed, so that validation can say it must be finite
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise ValueError(f"{field}={text!r}: expected a {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if current is not None and not isinstance(value, type(current)):
        raise ValueError(f"{field}={text!r}: expected a {type(current).__name__}, got {type(value).__name__}")
    return value


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """All dotted leaf keys of a nested config."""
    keys = []
    for key, value in config.items():
        if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
            keys.extend(flat_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Applies one `a.b.c=value` override in place."""
    path, sep, text = override.removeprefix("--config.").partition("=")
    if not sep:
        raise ValueError(f"override {override!r} is not of the form key=value")
    keys = flat_keys(config)
    if path not in keys:
        close = difflib.get_close_matches(path, keys, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown config field {path!r}{hint}")
    *parents, leaf = path.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    current = node[leaf]
    node[leaf] = parse_value(text, current, path) if current is not None else typed_placeholder(node, leaf, text, path)


def typed_placeholder(node: ml_collections.ConfigDict, leaf: str, text: str, path: str):
    """Parses a value for a field whose default is None, using its placeholder type if any."""
    field_type = node.get_type(leaf)
    if field_type in (str, int, float, bool):
        return parse_value(text, field_type(), path)
    return parse_value(text, None, path)


def load_module(path: str):
    """Imports a config file by path."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config(arg)")
    return module


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.FrozenConfigDict:
    """Loads `path[:arg]`, applies `overrides` (`"a.b=v"`), validates and freezes the config."""
    path, _, arg = spec.partition(":")
    config = load_module(path).get_config(arg or None)
    for override in overrides:
        apply_override(config, override)
    validate(config)
    return ml_collections.FrozenConfigDict(config)


def unfrozen(config) -> ml_collections.ConfigDict:
    """A mutable deep copy of a (possibly frozen) config."""
    return ml_collections.ConfigDict(config_dict.ConfigDict(config).to_dict())
