"""research/eval/grounding.py: box texts parse leniently and score with COCO mAP against the scene boxes."""

import numpy as np
import pytest

from research.data.interleaved import box_text
from research.data.scenes import SHAPES, scene
from research.eval.grounding import grounding_map, parse_boxes

SCENES = [scene("validation", index) for index in range(16)]


def score(texts):
    return grounding_map(texts, [r.boxes for r in SCENES], [r.categories for r in SCENES], SHAPES)


def test_well_formed_entries_are_kept_and_broken_ones_dropped():
    text = "circle 3 4 6 6; blob 1 1 2 2; square 1 2 3; triangle 5 5 0 4; square 10 20 12 12"
    assert parse_boxes(text, SHAPES) == [("circle", [3, 4, 6, 6]), ("square", [10, 20, 12, 12])]


def test_the_reference_boxes_score_one_and_nothing_scores_zero():
    assert score([box_text(r) for r in SCENES])["map"] == pytest.approx(1.0)
    assert score([""] * len(SCENES)) == {"map": 0.0, "map50": 0.0, "parsed_boxes": 0.0}


def test_boxes_shifted_by_a_pixel_score_between():
    shifted = ["; ".join(f"{c} {x + 1} {y} {w} {h}" for c, (x, y, w, h) in zip(r.categories, r.boxes.tolist()))
               for r in SCENES]
    result = score(shifted)
    assert result["map50"] == pytest.approx(1.0) and 0.0 < result["map"] < 1.0


def test_mismatched_inputs_are_named():
    with pytest.raises(ValueError, match="1 predictions for 16 images"):
        grounding_map(["circle 1 1 6 6"], [r.boxes for r in SCENES], [r.categories for r in SCENES], SHAPES)
    with pytest.raises(ValueError, match="no predictions"):
        grounding_map([], [], [], SHAPES)
    assert np.isclose(score([box_text(r) for r in SCENES])["parsed_boxes"], np.mean([len(r.boxes) for r in SCENES]))
