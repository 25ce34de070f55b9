"""Captioning accuracy on the procedural scenes (research/data/scenes.py): shape and colour named.

A caption names objects as "<size> <colour> <shape>" ("a small red circle and a large blue
square"); `named_objects` reads every such phrase out of a text, in order, ignoring anything else.
An object counts as named correctly when its (colour, shape) pair is among the generated text's
pairs (its size is not judged). Over images i with reference pairs R_i and generated pairs G_i:

    object_accuracy = Σ_i |R_i ∩ G_i| / Σ_i |R_i|        exact = mean_i [R_i = G_i]

so extra or repeated objects cost `exact`, never `object_accuracy`.
"""

import re
from collections.abc import Sequence

from research.data.scenes import COLORS, SHAPES, SIZES

OBJECT_PHRASE = re.compile(rf"\b({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")


def named_objects(text: str) -> list[tuple[str, str, str]]:
    """(size, colour, shape) of every object phrase in `text`, in order."""
    return OBJECT_PHRASE.findall(text)


def colour_shape_pairs(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs `text` names."""
    return {(colour, shape) for _, colour, shape in named_objects(text)}


def caption_accuracy(generated: Sequence[str], references: Sequence[str]) -> dict:
    """{"object_accuracy", "exact"} of generated captions against the reference captions (module docstring)."""
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated captions for {len(references)} references")
    if not references:
        raise ValueError("no captions to score")
    named = total = exact = 0
    for text, reference in zip(generated, references):
        wanted, got = colour_shape_pairs(reference), colour_shape_pairs(text)
        if not wanted:
            raise ValueError(f"reference caption {reference!r} names no object")
        named += len(wanted & got)
        total += len(wanted)
        exact += wanted == got
    return {"object_accuracy": named / total, "exact": exact / len(references)}
