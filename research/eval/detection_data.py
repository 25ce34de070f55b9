"""COCO-format ground truth and detections → validated flat NumPy arrays.

Both evaluators (COCO and VOC) read the same inputs:

* ground truth: a dict with ``images`` (``{"id": ...}``), ``categories``
  (``{"id": ..., "name": ...}``) and ``annotations`` (``{"id", "image_id",
  "category_id", "bbox": [x, y, w, h], "area"?, "iscrowd"?, "difficult"?}``);
* detections: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
  "score"}``.

Every entry is checked; the first bad one is named in a `DetectionInputError`
(a `ValueError`). Nothing is dropped silently: an annotation or detection on an
image or category that the ground truth does not list is an error (pycocotools
would drop it, or assert without saying which).

Conversion is a fast path (list comprehensions + one `np.asarray` per field);
only when it fails does a slow per-entry pass run to find and name the culprit.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


class DetectionInputError(ValueError):
    """Bad detection-evaluation input; the message names the offending entry."""


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """Ground truth as flat arrays; `image`/`category` index the sorted id tuples."""

    image_ids: tuple
    category_ids: tuple
    category_names: tuple
    image: np.ndarray  # [N] int64
    category: np.ndarray  # [N] int64
    box: np.ndarray  # [N, 4] float64, x y w h
    area: np.ndarray  # [N] float64 (the `area` field, else w * h)
    iscrowd: np.ndarray  # [N] bool
    difficult: np.ndarray  # [N] bool (VOC's flag; COCO ignores it)
    id_is_zero: np.ndarray  # [N] bool: annotation id == 0 (see detection_coco)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_categories(self) -> int:
        return len(self.category_ids)


@dataclasses.dataclass(frozen=True)
class Detections:
    image: np.ndarray  # [N] int64 index into GroundTruth.image_ids
    category: np.ndarray  # [N] int64 index into GroundTruth.category_ids
    box: np.ndarray  # [N, 4] float64, x y w h
    score: np.ndarray  # [N] float64


def load_json(path: str, what: str) -> Any:
    """Reads a JSON file; malformed JSON raises a DetectionInputError with the position."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DetectionInputError(
            f"{what} file {path!r} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except UnicodeDecodeError as e:
        raise DetectionInputError(f"{what} file {path!r} is not UTF-8 text: {e}") from None


# --------------------------------------------------------------------------- helpers


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_entries(entries: Any, where: str) -> Sequence:
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
        raise DetectionInputError(f"{where} must be a list, got {type(entries).__name__}")
    return entries


def _column(entries: Sequence, key: str, where: str, describe: Callable[[int], str]) -> list:
    """[e[key] for e in entries], naming the first entry that is not a dict or lacks key."""
    try:
        return [e[key] for e in entries]
    except (KeyError, TypeError, IndexError):
        pass
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping):
            raise DetectionInputError(f"{where}[{i}] is not an object: {_short(e)}")
        if key not in e:
            raise DetectionInputError(f"{describe(i)} has no '{key}'")
    raise AssertionError("unreachable")  # pragma: no cover


def _optional_column(entries: Sequence, key: str, default: Any) -> list:
    return [e.get(key, default) for e in entries]


def _reals(values: list, what: str, describe: Callable[[int], str], width: int | None = None) -> np.ndarray:
    """float64 array of shape [N] or [N, width] from real numbers; names the first bad entry."""
    n = len(values)
    shape = (n,) if width is None else (n, width)
    if n == 0:
        return np.zeros(shape)
    try:
        arr = np.asarray(values)
        ok = arr.shape == shape and arr.dtype.kind in "iuf"
    except (ValueError, TypeError, OverflowError):
        ok = False
    if ok:
        arr = arr.astype(np.float64, copy=False)
    else:
        for i, v in enumerate(values):
            if width is None:
                good = _is_real(v)
            else:
                good = isinstance(v, (list, tuple, np.ndarray)) and len(v) == width and all(map(_is_real, v))
            if not good:
                need = "a number" if width is None else f"a list of {width} numbers"
                raise DetectionInputError(f"{describe(i)}: {what} must be {need}, got {_short(v)}")
        arr = np.asarray(values, dtype=np.float64)  # e.g. integers beyond int64, which the fast path refused
    bad = ~np.isfinite(arr) if width is None else ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DetectionInputError(f"{describe(i)}: {what} is not finite: {_short(values[i])}" + _more(bad))
    return arr


def _more(bad: np.ndarray) -> str:
    k = int(bad.sum())
    return f" (and {k - 1} more entries like it)" if k > 1 else ""


def _check_boxes(box: np.ndarray, describe: Callable[[int], str]) -> None:
    for col, name in ((2, "width"), (3, "height")):
        bad = box[:, col] < 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DetectionInputError(
                f"{describe(i)}: bbox has negative {name} {float(box[i, col])!r} (bbox is [x, y, width, height]: "
                f"{box[i].tolist()})" + _more(bad)
            )


def _flags(values: list, what: str, describe: Callable[[int], str]) -> np.ndarray:
    try:
        arr = np.asarray(values)
        ok = arr.shape == (len(values),) and arr.dtype.kind in "biu" and bool(np.isin(arr, (0, 1)).all())
    except (ValueError, TypeError):
        ok = False
    if ok:
        arr = arr.astype(np.float64, copy=False)
    else:
        for i, v in enumerate(values):
            if not (isinstance(v, (bool, int, np.integer, np.bool_)) and v in (0, 1)):
                raise DetectionInputError(f"{describe(i)}: {what} must be 0 or 1, got {_short(v)}")
    return np.asarray(values, dtype=bool).reshape(len(values))


def _sorted_ids(ids: list, where: str) -> tuple:
    seen: dict = {}
    for i, x in enumerate(ids):
        try:
            if x in seen:
                raise DetectionInputError(f"{where}[{i}] repeats id {x!r} (first at {where}[{seen[x]}])")
        except TypeError:
            raise DetectionInputError(f"{where}[{i}]: id must be a number or a string, got {_short(x)}") from None
        if isinstance(x, (bool, float)) or not isinstance(x, (numbers.Integral, str)):
            raise DetectionInputError(f"{where}[{i}]: id must be an integer or a string, got {_short(x)}")
        seen[x] = i
    try:
        return tuple(sorted(seen))
    except TypeError:
        raise DetectionInputError(f"{where}: ids mix integers and strings, which cannot be sorted") from None


def _index(values: list, table: dict, what: str, known: str, describe: Callable[[int], str]) -> np.ndarray:
    """Maps ids to indices through `table`; names the first id it does not know."""
    try:
        return np.fromiter((table[v] for v in values), dtype=np.int64, count=len(values))
    except (KeyError, TypeError):
        pass
    for i, v in enumerate(values):
        try:
            table[v]
        except (KeyError, TypeError):
            raise DetectionInputError(f"{describe(i)}: unknown {what} {_short(v)} (not in {known})") from None
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- parsing


def parse_ground_truth(ground_truth: Any) -> GroundTruth:
    if not isinstance(ground_truth, Mapping):
        raise DetectionInputError(
            f"ground truth must be a COCO-format object with 'images', 'annotations' and 'categories', "
            f"got {type(ground_truth).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if key not in ground_truth:
            raise DetectionInputError(f"ground truth has no '{key}' list (COCO format)")
    images = _check_entries(ground_truth["images"], "ground_truth['images']")
    categories = _check_entries(ground_truth["categories"], "ground_truth['categories']")
    anns = _check_entries(ground_truth["annotations"], "ground_truth['annotations']")

    image_ids = _sorted_ids(
        _column(images, "id", "ground_truth['images']", lambda i: f"ground_truth['images'][{i}]"),
        "ground_truth['images']",
    )
    cat_col = _column(categories, "id", "ground_truth['categories']", lambda i: f"ground_truth['categories'][{i}]")
    category_ids = _sorted_ids(cat_col, "ground_truth['categories']")
    names = {c["id"]: str(c.get("name", c["id"])) for c in categories}
    category_names = tuple(names[c] for c in category_ids)

    where = "ground_truth['annotations']"

    def describe(i: int) -> str:
        a = anns[i]
        tags = ", ".join(f"{k}={a[k]!r}" for k in ("id", "image_id", "category_id") if k in a)
        return f"{where}[{i}]" + (f" ({tags})" if tags else "")

    img_col = _column(anns, "image_id", where, describe)
    cat_col = _column(anns, "category_id", where, describe)
    box_col = _column(anns, "bbox", where, describe)
    image = _index(img_col, {x: i for i, x in enumerate(image_ids)}, "image_id", "ground_truth['images']", describe)
    category = _index(
        cat_col, {x: i for i, x in enumerate(category_ids)}, "category_id", "ground_truth['categories']", describe
    )
    box = _reals(box_col, "bbox", describe, width=4)
    _check_boxes(box, describe)

    has_area = np.fromiter(("area" in a for a in anns), dtype=bool, count=len(anns))
    area = box[:, 2] * box[:, 3]
    if has_area.any():
        given = _reals(_optional_column(anns, "area", 0.0), "area", describe)
        bad = has_area & (given < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DetectionInputError(f"{describe(i)}: area is negative: {float(given[i])!r}" + _more(bad))
        area = np.where(has_area, given, area)
    iscrowd = _flags(_optional_column(anns, "iscrowd", 0), "iscrowd", describe)
    difficult = _flags(_optional_column(anns, "difficult", 0), "difficult", describe)
    id_is_zero = np.fromiter(
        (_is_real(x) and x == 0 for x in _optional_column(anns, "id", None)), dtype=bool, count=len(anns)
    )
    return GroundTruth(
        image_ids=image_ids,
        category_ids=category_ids,
        category_names=category_names,
        image=image,
        category=category,
        box=box,
        area=area,
        iscrowd=iscrowd,
        difficult=difficult,
        id_is_zero=id_is_zero,
    )


def parse_detections(detections: Any, gt: GroundTruth) -> Detections:
    where = "detections"
    dets = _check_entries(detections, where)

    def describe(i: int) -> str:
        d = dets[i]
        tags = ", ".join(f"{k}={d[k]!r}" for k in ("image_id", "category_id", "score") if k in d)
        return f"{where}[{i}]" + (f" ({tags})" if tags else "")

    img_col = _column(dets, "image_id", where, describe)
    cat_col = _column(dets, "category_id", where, describe)
    box_col = _column(dets, "bbox", where, describe)
    score_col = _column(dets, "score", where, describe)
    image = _index(
        img_col, {x: i for i, x in enumerate(gt.image_ids)}, "image_id", "the ground truth's images", describe
    )
    category = _index(
        cat_col, {x: i for i, x in enumerate(gt.category_ids)}, "category_id", "the ground truth's categories",
        describe,
    )
    box = _reals(box_col, "bbox", describe, width=4)
    _check_boxes(box, describe)
    score = _reals(score_col, "score", describe)
    return Detections(image=image, category=category, box=box, score=score)
