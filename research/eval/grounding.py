"""Grounding scored as detection: boxes the model writes as text, parsed and scored with COCO mAP.

The text is research/data/interleaved.py's box list, "circle 3 4 6 6; square 12 20 12 12": entries
split on ";", each a category name and four integers [x, y, w, h]. An entry that does not parse
(an unknown category, a missing or extra number) is dropped, so a half-formed answer still scores
its good boxes. Generation gives no confidence, so the k-th box of an image scores 1 / (k + 1): the
model's own order ranks them. `grounding_map` hands the boxes of every image and the reference
boxes to `research.eval.detection.coco_evaluate` (COCO's AP@[.50:.95] and AP@.50 over the categories
that have a reference box).
"""

from collections.abc import Sequence

import numpy as np

from research.eval.detection import coco_evaluate


def parse_boxes(text: str, categories: Sequence[str]) -> list[tuple[str, list[int]]]:
    """(category, [x, y, w, h]) of each well-formed entry of `text`, in order."""
    boxes = []
    for entry in text.split(";"):
        fields = entry.split()
        if len(fields) != 5 or fields[0] not in categories or not all(f.isdigit() for f in fields[1:]):
            continue
        box = [int(f) for f in fields[1:]]
        if box[2] > 0 and box[3] > 0:
            boxes.append((fields[0], box))
    return boxes


def coco_inputs(predicted: Sequence[str], reference_boxes: Sequence[np.ndarray],
                reference_categories: Sequence[Sequence[str]], categories: Sequence[str]) -> tuple[dict, list]:
    """(ground truth, detections) in COCO's format; image i is `predicted[i]` against its references."""
    ids = {name: index + 1 for index, name in enumerate(categories)}
    annotations, detections = [], []
    for image_id, (text, boxes, names) in enumerate(zip(predicted, reference_boxes, reference_categories), start=1):
        for box, name in zip(np.asarray(boxes).tolist(), names):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[name],
                                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0})
        for rank, (name, box) in enumerate(parse_boxes(text, categories)):
            detections.append({"image_id": image_id, "category_id": ids[name], "bbox": [float(v) for v in box],
                               "score": 1.0 / (rank + 1)})
    ground_truth = {"images": [{"id": i} for i in range(1, len(predicted) + 1)],
                    "categories": [{"id": i, "name": n} for n, i in ids.items()], "annotations": annotations}
    return ground_truth, detections


def grounding_map(predicted: Sequence[str], reference_boxes: Sequence[np.ndarray],
                  reference_categories: Sequence[Sequence[str]], categories: Sequence[str]) -> dict:
    """{"map": AP@[.50:.95], "map50": AP@.50, "parsed_boxes": boxes per image} of the box texts `predicted`."""
    if not (len(predicted) == len(reference_boxes) == len(reference_categories)):
        raise ValueError(f"{len(predicted)} predictions for {len(reference_boxes)} images of reference boxes and "
                         f"{len(reference_categories)} of categories")
    if not predicted:
        raise ValueError("no predictions to score")
    ground_truth, detections = coco_inputs(predicted, reference_boxes, reference_categories, categories)
    summary = coco_evaluate(ground_truth, detections)
    return {"map": max(summary["AP"], 0.0), "map50": max(summary["AP50"], 0.0),
            "parsed_boxes": len(detections) / len(predicted)}
