"""research/data/scenes.py: deterministic scenes whose boxes and captions match their pixels, the digits,
and the tfds builders' round trip."""

import re

import numpy as np
import pytest

from research.data import scenes

DESCRIPTION = re.compile(r"a (small|medium|large) (\w+) (circle|square|triangle)")


def described(caption: str) -> list[tuple[str, str, str]]:
    """(size, colour, shape) of each shape a scene caption names, in order."""
    parts = re.split(r", | and ", caption)
    matches = [DESCRIPTION.fullmatch(part) for part in parts]
    assert all(matches), caption
    return [match.groups() for match in matches]


def test_scenes_are_deterministic_and_differ_between_indices_and_splits():
    first, again = scenes.scene("train", 3), scenes.scene("train", 3)
    np.testing.assert_array_equal(first.image, again.image)
    assert (first.caption, first.categories) == (again.caption, again.categories)
    np.testing.assert_array_equal(first.boxes, again.boxes)
    others = [scenes.scene("train", 4), scenes.scene("validation", 3)]
    assert all(not np.array_equal(first.image, other.image) for other in others)


@pytest.mark.parametrize("index", range(40))
def test_boxes_lie_inside_the_image_and_bound_exactly_the_pixels_of_the_captioned_shape(index):
    record = scenes.scene("train", index)
    descriptions = described(record.caption)
    assert 1 <= len(descriptions) == len(record.boxes) == len(record.categories) <= scenes.MAX_SHAPES
    painted = np.zeros(record.image.shape[:2], bool)
    for (size, color, shape), box, category in zip(descriptions, record.boxes, record.categories):
        x, y, w, h = box
        assert shape == category and w == h == scenes.SIZES[size]
        assert 0 <= x and 0 <= y and x + w <= scenes.IMAGE_SIDE and y + h <= scenes.IMAGE_SIDE
        rows, cols = np.nonzero(np.all(record.image == scenes.COLORS[color], axis=-1))
        assert (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1) == tuple(box)
        painted[rows, cols] = True
    assert not record.image[~painted].any()  # the rest is background


@pytest.mark.parametrize("shape", scenes.SHAPES)
@pytest.mark.parametrize("size", scenes.SIZES.values())
def test_every_shape_touches_all_four_sides_of_its_box(shape, size):
    mask = scenes.shape_mask(shape, size)
    assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
    assert 0 < mask.sum() <= size * size and (shape == "square") == mask.all()


def test_digits_are_upsampled_grey_with_their_ink_box_and_caption():
    records = scenes.digit_records()
    assert len(records["train"]) + len(records["validation"]) == 1797
    assert len(records["validation"]) == 180  # every tenth
    for record in records["validation"][:20]:
        assert record.image.shape == (32, 32, 3) and record.image.dtype == np.uint8
        np.testing.assert_array_equal(record.image[..., 0], record.image[..., 2])
        assert record.caption == f"the digit {record.categories[0]}"
        x, y, w, h = record.boxes[0]
        ink = record.image[..., 0] > 0
        assert ink[y:y + h, x:x + w].sum() == ink.sum() and ink[y, x:x + w].any() and ink[y + h - 1, x:x + w].any()


class TinyScenes(scenes.ShapeScenes):
    SPLIT_SIZES = {"train": 5, "validation": 3}


def test_the_builder_round_trips_a_tiny_count_through_array_record(tmp_path):
    for split, count in TinyScenes.SPLIT_SIZES.items():
        stored = scenes.read_split(TinyScenes, split, str(tmp_path))
        assert len(stored) == count
        expected = {scenes.scene(split, i).caption: scenes.scene(split, i) for i in range(count)}
        for record in stored:
            original = expected[record.caption]
            np.testing.assert_array_equal(record.image, original.image)
            np.testing.assert_array_equal(record.boxes, original.boxes)
            assert record.categories == original.categories
    assert list((tmp_path / "tiny_scenes" / "1.0.0").glob("*.array_record*"))


@pytest.mark.parametrize("name, split, message", [
    ("coco", "train", r"unknown image dataset 'coco'.*digits.*shape_scenes"),
    ("digits", "test", r"unknown split 'test' of image dataset 'digits'"),
])
def test_unknown_dataset_or_split_is_named(name, split, message):
    with pytest.raises(ValueError, match=message):
        scenes.data_source(name, split)
