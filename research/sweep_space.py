"""What a sweep searches: `--sweep` flags or a config's `get_sweep`, as a grid plan or a space to sample.

- `FIELD=V1,V2,...` is a list of override texts (a grid axis; a categorical choice when sampled);
- `FIELD=loguniform(LO,HI)` / `uniform(LO,HI)` is a range, only sampled (a float, or an int for an int
  field); a sampled float becomes the override text `f"{value:.3g}"`, so trial names stay readable.

A grid plan is the product of the value lists (the last field varies fastest) or, without `--sweep`,
the override dicts of the config file's `get_sweep(arg) -> list[dict]`. Every trial is named by its
overrides, `leaf=value,...` (the full dotted field where two swept fields share a leaf), so a trial
retried with the same values runs in the same directory and resumes there.
"""

import dataclasses
import hashlib
import itertools
import re
from collections.abc import Sequence

import ml_collections

from research import config as config_lib

RANGE_PATTERN = re.compile(r"^(loguniform|uniform)\((.*)\)$")
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=-]")
MAX_NAME_LENGTH = 120


@dataclasses.dataclass(frozen=True)
class ValueList:
    """`FIELD=V1,V2,...`: the override texts one field takes."""

    field: str
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ValueRange:
    """`FIELD=loguniform(LO,HI)` or `FIELD=uniform(LO,HI)`: where a sampler draws a field."""

    field: str
    low: float
    high: float
    log: bool


def split_values(text: str) -> list[str]:
    """`text` split at the commas outside brackets and quotes, each part stripped."""
    parts, current, depth, quote = [], [], 0, None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def parse_sweep_flag(text: str) -> ValueList | ValueRange:
    """Parses one `--sweep` flag: `FIELD=V1,V2,...` or `FIELD=loguniform(LO,HI)` / `uniform(LO,HI)`."""
    field, sep, spec = text.partition("=")
    field, spec = field.strip().removeprefix("--config."), spec.strip()
    if not sep or not field:
        raise ValueError(f"--sweep {text!r} is not of the form FIELD=V1,V2,... or FIELD=loguniform(LO,HI)")
    match = RANGE_PATTERN.match(spec)
    if match:
        return parse_range(field, match.group(1), match.group(2))
    values = split_values(spec)
    if not spec:
        raise ValueError(f"--sweep {text!r}: the value list of {field} is empty")
    if not all(values):
        raise ValueError(f"--sweep {text!r}: the value list of {field} has an empty value")
    if len(set(values)) < len(values):
        raise ValueError(f"--sweep {text!r}: the value list of {field} repeats a value")
    return ValueList(field, tuple(values))


def parse_range(field: str, kind: str, bounds_text: str) -> ValueRange:
    """The range `kind(bounds_text)` of `field`; LO < HI, and LO > 0 for loguniform."""
    bounds = split_values(bounds_text)
    try:
        low, high = (float(bound) for bound in bounds)
    except ValueError:
        raise ValueError(f"--sweep {field}={kind}({bounds_text}): expected two numbers, LO and HI") from None
    if not low < high:
        raise ValueError(f"--sweep {field}={kind}({bounds_text}): LO must be below HI")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"--sweep {field}={kind}({bounds_text}): loguniform needs LO > 0")
    return ValueRange(field, low, high, log=kind == "loguniform")


def parse_axes(sweep_flags: Sequence[str]) -> list[ValueList | ValueRange]:
    """The parsed `--sweep` flags; ValueError if a field is named twice."""
    axes = [parse_sweep_flag(flag) for flag in sweep_flags]
    fields = [axis.field for axis in axes]
    repeated = sorted({field for field in fields if fields.count(field) > 1})
    if repeated:
        raise ValueError(f"--sweep names {', '.join(repeated)} more than once")
    return axes


def grid(axes: Sequence[ValueList | ValueRange]) -> list[dict]:
    """Every combination of the value lists of `axes` (the last field varies fastest)."""
    ranges = [axis.field for axis in axes if isinstance(axis, ValueRange)]
    if ranges:
        raise ValueError(f"{', '.join(ranges)}: a range is drawn from by a sampler; add --sampler random, tpe "
                         "or cmaes")
    fields = [axis.field for axis in axes]
    return [dict(zip(fields, combination)) for combination in itertools.product(*(a.values for a in axes))]


def config_sweep(spec: str) -> list[dict]:
    """The override dicts of `get_sweep(arg)` in the config file of `spec`, values as override text."""
    path, _, arg = spec.partition(":")
    module = config_lib.load_module(path)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"no --sweep given and {path} defines no get_sweep(arg)")
    return [{field: override_text(value) for field, value in overrides.items()}
            for overrides in module.get_sweep(arg or None)]


def override_text(value) -> str:
    """The command-line text of a config value: strings as they are, anything else as a literal."""
    return value if isinstance(value, str) else repr(value)


def numeric_field_type(config: ml_collections.FrozenConfigDict, field: str) -> type:
    """int or float, the type of `field`, which a range must have. An unknown field raises
    `research.config`'s ValueError, which names the closest real fields."""
    probe = config_lib.unfrozen(config)
    config_lib.apply_override(probe, f"{field}=0")
    value = lookup(probe, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"--sweep {field}: a range needs a numeric field; {field} holds {type(value).__name__}")
    return type(value)


def suggest(trial, axes: Sequence[ValueList | ValueRange], field_types: dict) -> dict:
    """The overrides (field -> text) an Optuna trial draws from `axes`; `field_types` gives each
    range's field type (`numeric_field_type`)."""
    overrides = {}
    for axis in axes:
        if isinstance(axis, ValueList):
            overrides[axis.field] = trial.suggest_categorical(axis.field, axis.values)
        elif field_types[axis.field] is int:
            overrides[axis.field] = str(trial.suggest_int(axis.field, round(axis.low), round(axis.high),
                                                          log=axis.log))
        else:
            overrides[axis.field] = f"{trial.suggest_float(axis.field, axis.low, axis.high, log=axis.log):.3g}"
    return overrides


def short_fields(fields: Sequence[str]) -> dict:
    """Each field's name in trial names: its leaf, or the whole field where two fields share a leaf."""
    leaves = [field.rsplit(".", 1)[-1] for field in fields]
    return {field: leaf if leaves.count(leaf) == 1 else field for field, leaf in zip(fields, leaves)}


def trial_names(override_sets: Sequence[dict]) -> list[str]:
    """A filesystem-safe name per trial of a plan; raises ValueError if two names coincide."""
    short = short_fields(list(dict.fromkeys(field for overrides in override_sets for field in overrides)))
    names = [trial_name(overrides, short) for overrides in override_sets]
    seen = {}
    for name, overrides in zip(names, override_sets):
        if name in seen:
            raise ValueError(f"two trials share the name {name!r}: {seen[name]} and {overrides}")
        seen[name] = overrides
    return names


def trial_name(overrides: dict, short: dict) -> str:
    """`leaf=value,...` with characters other than letters, digits and `._+=-` in a field or
    value replaced by `_`, shortened with a hash of the overrides if long; "base" if none."""
    text = ",".join(f"{short[field]}={value}" for field, value in overrides.items())
    name = ",".join(UNSAFE_NAME_CHARS.sub("_", f"{short[field]}={value}")
                    for field, value in overrides.items()) or "base"
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME_LENGTH - 9]}-{digest}"
    return name


def lookup(config, field: str):
    """The value of the dotted `field` of `config`."""
    node = config
    for key in field.split("."):
        node = node[key]
    return node


def trial_config(spec: str, fixed: Sequence[str], overrides: dict, name: str) -> ml_collections.FrozenConfigDict:
    """The validated config of one trial; ValueError naming the trial and what is wrong."""
    both = sorted({override.partition("=")[0] for override in fixed} & set(overrides))
    if both:
        raise ValueError(f"{', '.join(both)} is both swept and fixed by --config")
    try:
        return config_lib.load(spec, [*fixed, *(f"{field}={value}" for field, value in overrides.items())])
    except ValueError as error:
        raise ValueError(f"trial {name}: {error}") from None


def swept_values(config, overrides: dict) -> dict:
    """The resolved value of each overridden field (e.g. 0.001 for the text "1e-3")."""
    return {field: lookup(config, field) for field in overrides}
