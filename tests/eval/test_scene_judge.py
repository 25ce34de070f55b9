"""research/eval/scene_judge.py: the generator's own scenes are judged right, blank or recoloured ones wrong."""

import numpy as np
import pytest

from research.data.scenes import scene, shape_mask
from research.eval.scene_judge import classify_shape, drawing_accuracy, found_objects

SCENES = [scene("validation", index) for index in range(24)]


def test_every_generated_scene_is_read_back_with_its_colours_shapes_and_boxes():
    assert drawing_accuracy([record.image for record in SCENES], [record.caption for record in SCENES]) == {
        "object_accuracy": 1.0, "exact": 1.0}
    record = SCENES[0]
    assert sorted(box for _, _, box in found_objects(record.image)) == sorted(record.boxes.tolist())


def test_floats_in_minus_one_to_one_are_read_like_uint8():
    floats = [record.image.astype(np.float32) / 127.5 - 1.0 for record in SCENES[:4]]
    assert drawing_accuracy(floats, [record.caption for record in SCENES[:4]])["exact"] == 1.0


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
@pytest.mark.parametrize("side", [6, 9, 12])
def test_each_shape_is_classified_at_each_size(shape, side):
    assert classify_shape(shape_mask(shape, side)) == shape


def test_a_blank_image_and_a_recoloured_scene_score_nothing():
    blank = np.zeros((32, 32, 3), np.uint8)
    assert drawing_accuracy([blank], [SCENES[0].caption]) == {"object_accuracy": 0.0, "exact": 0.0}
    swapped = SCENES[0].image[..., ::-1]  # RGB → BGR moves every colour off its palette entry
    assert drawing_accuracy([swapped], [SCENES[0].caption])["exact"] == 0.0


def test_an_image_without_three_channels_is_named():
    with pytest.raises(ValueError, match=r"image of shape \(32, 32\): expected \[height, width, 3\]"):
        found_objects(np.zeros((32, 32), np.uint8))
