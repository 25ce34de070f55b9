"""research/eval/scene_captions.py: objects are read out of free text, and accuracy counts colour and shape."""

import pytest

from research.eval.scene_captions import caption_accuracy, named_objects

REFERENCE = "a small red circle, a large blue square and a medium green triangle"


def test_object_phrases_are_read_in_order_among_other_words():
    assert named_objects("I see a large blue square, a small red circle and noise: red circle") == [
        ("large", "blue", "square"), ("small", "red", "circle")]


def test_accuracy_counts_colour_and_shape_not_size_and_exact_needs_the_same_set():
    generated = ["a large red circle and a large blue square", REFERENCE, "nothing to see"]
    scores = caption_accuracy(generated, [REFERENCE] * 3)
    assert scores["object_accuracy"] == pytest.approx((2 + 3 + 0) / 9)
    assert scores["exact"] == pytest.approx(1 / 3)
    assert caption_accuracy([REFERENCE + " and a small white circle"], [REFERENCE])["exact"] == 0.0


def test_mismatched_lengths_and_empty_references_are_named():
    with pytest.raises(ValueError, match="2 generated captions for 1 references"):
        caption_accuracy(["a", "b"], [REFERENCE])
    with pytest.raises(ValueError, match="names no object"):
        caption_accuracy(["a"], ["the digit 7"])
