"""Judging a generated scene image against its caption with the generator's own rules (research/data/scenes.py).

A scene is black with each object in its own flat palette colour, so a picture is read back as:

1. colour of each pixel: the nearest (Euclidean, RGB) of black and the palette `COLORS`;
2. an object per colour that covers at least `MIN_PIXELS` pixels: its largest 8-connected
   component, whose bounding box is the object's box;
3. its shape: the s × s crop at the box's top-left corner, s = max(box width, height), matched to
   the generator's masks `shape_mask(shape, s)`; the shape with the highest IoU wins.

With R_i the caption's (colour, shape) pairs and F_i the pairs found in image i:

    object_accuracy = Σ_i |R_i ∩ F_i| / Σ_i |R_i|        exact = mean_i [R_i = F_i]

(an extra object, a colour the caption does not name, costs only `exact`).
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from research.data.scenes import COLORS, SHAPES, shape_mask
from research.eval.scene_captions import colour_shape_pairs

PALETTE = np.array([(0, 0, 0), *COLORS.values()], np.float32)  # index 0: the black background
MIN_PIXELS = 12  # half the smallest object (a 6-pixel triangle covers 24)
EIGHT_NEIGHBOURS = np.ones((3, 3), bool)


def as_uint8(image) -> np.ndarray:
    """uint8 `[H, W, 3]` of an image given as uint8 or as floats in [-1, 1]; ValueError for another shape."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image of shape {image.shape}: expected [height, width, 3] RGB")
    if np.issubdtype(image.dtype, np.floating):
        return np.round((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return image.astype(np.uint8)


def palette_indices(image) -> np.ndarray:
    """int `[H, W]`: each pixel's nearest palette entry (0 black, i ≥ 1 the i-th of `COLORS`)."""
    pixels = as_uint8(image).astype(np.float32)
    return np.argmin(np.sum((pixels[:, :, None, :] - PALETTE) ** 2, axis=-1), axis=-1)


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose generator mask at the crop's side best overlaps `mask` (bool, cropped to its box)."""
    side = max(mask.shape)
    crop = np.zeros((side, side), bool)
    crop[:mask.shape[0], :mask.shape[1]] = mask
    overlaps = [np.sum(crop & shape_mask(shape, side)) / np.sum(crop | shape_mask(shape, side)) for shape in SHAPES]
    return SHAPES[int(np.argmax(overlaps))]


def found_objects(image) -> list[tuple[str, str, list[int]]]:
    """(colour, shape, COCO box [x, y, w, h]) of every object read off `image` (module docstring)."""
    indices = palette_indices(image)
    objects = []
    for index, colour in enumerate(COLORS, start=1):
        if np.sum(indices == index) < MIN_PIXELS:
            continue
        components, count = ndimage.label(indices == index, structure=EIGHT_NEIGHBOURS)
        largest = 1 + int(np.argmax(np.bincount(components.ravel(), minlength=count + 1)[1:]))
        rows, cols = np.nonzero(components == largest)
        y, x = int(rows.min()), int(cols.min())
        height, width = int(rows.max()) - y + 1, int(cols.max()) - x + 1
        mask = components[y:y + height, x:x + width] == largest
        objects.append((colour, classify_shape(mask), [x, y, width, height]))
    return objects


def drawing_accuracy(images: Sequence, captions: Sequence[str]) -> dict:
    """{"object_accuracy", "exact"} of images drawn for `captions` (module docstring)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images for {len(captions)} captions")
    if not captions:
        raise ValueError("no images to judge")
    named = total = exact = 0
    for image, caption in zip(images, captions):
        wanted = colour_shape_pairs(caption)
        found = {(colour, shape) for colour, shape, _ in found_objects(image)}
        named += len(wanted & found)
        total += len(wanted)
        exact += wanted == found
    return {"object_accuracy": named / max(total, 1), "exact": exact / len(captions)}
