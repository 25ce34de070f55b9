"""Bad input: a DetectionInputError (a ValueError) that names the offending entry; nothing dropped."""
import copy

import pytest

from research.eval.detection import DetectionInputError, coco_evaluate, voc_evaluate
from research.eval.detection_data import load_json

GT = {
    "images": [{"id": 1}, {"id": 2}],
    "categories": [{"id": 1, "name": "person"}, {"id": 7, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
    ],
}
DETS = [
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
    {"image_id": 2, "category_id": 7, "bbox": [5, 5, 20, 20], "score": 0.8},
    {"image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.1},
]


def _dets_with(i, **change):
    dets = copy.deepcopy(DETS)
    dets[i].update(change)
    return dets


def _gt_with(i, **change):
    gt = copy.deepcopy(GT)
    gt["annotations"][i].update(change)
    return gt


@pytest.mark.parametrize(
    "dets, pattern",
    [
        (_dets_with(2, bbox=[1, 1, -2, 2]), r"detections\[2\] .*negative width -2\.0"),
        (_dets_with(1, bbox=[1, 1, 2, -0.5]), r"detections\[1\] .*negative height -0\.5"),
        (_dets_with(2, score=float("nan")), r"detections\[2\] .*score is not finite: nan"),
        (_dets_with(0, score=float("inf")), r"detections\[0\] .*score is not finite: inf"),
        (_dets_with(1, score=-float("inf")), r"detections\[1\] .*score is not finite"),
        (_dets_with(1, bbox=[0, float("nan"), 1, 1]), r"detections\[1\] .*bbox is not finite"),
        (_dets_with(2, image_id=99), r"detections\[2\] .*unknown image_id 99"),
        (_dets_with(1, category_id=3), r"detections\[1\] .*unknown category_id 3"),
        (_dets_with(0, score="high"), r"detections\[0\] .*score must be a number, got 'high'"),
        (_dets_with(2, bbox=[1, 2, 3]), r"detections\[2\] .*bbox must be a list of 4 numbers"),
        (_dets_with(2, bbox=None), r"detections\[2\] .*bbox must be a list of 4 numbers, got None"),
        (_dets_with(1, image_id=[1]), r"detections\[1\] .*unknown image_id \[1\]"),
        ([DETS[0], "oops"], r"detections\[1\] is not an object"),
        ({"image_id": 1}, r"detections must be a list, got dict"),
    ],
)
def test_bad_detections_are_named(dets, pattern):
    for evaluate in (coco_evaluate, voc_evaluate):
        with pytest.raises(DetectionInputError, match=pattern):
            evaluate(GT, dets)


def test_missing_key_is_named():
    dets = copy.deepcopy(DETS)
    del dets[1]["score"]
    with pytest.raises(DetectionInputError, match=r"detections\[1\] \(image_id=2, category_id=7\) has no 'score'"):
        coco_evaluate(GT, dets)


def test_count_of_further_bad_entries_is_reported():
    dets = copy.deepcopy(DETS)
    for d in dets[1:]:
        d["score"] = float("nan")
    with pytest.raises(DetectionInputError, match=r"detections\[1\] .*and 1 more"):
        coco_evaluate(GT, dets)


@pytest.mark.parametrize(
    "gt, pattern",
    [
        (_gt_with(1, bbox=[0, 0, -1, 3]), r"ground_truth\['annotations'\]\[1\] \(id=2, .*negative width"),
        (_gt_with(0, image_id=5), r"ground_truth\['annotations'\]\[0\] .*unknown image_id 5"),
        (_gt_with(1, category_id=2), r"ground_truth\['annotations'\]\[1\] .*unknown category_id 2"),
        (_gt_with(0, area=float("nan")), r"ground_truth\['annotations'\]\[0\] .*area is not finite"),
        (_gt_with(0, area=-4), r"ground_truth\['annotations'\]\[0\] .*area is negative"),
        (_gt_with(1, iscrowd=2), r"ground_truth\['annotations'\]\[1\] .*iscrowd must be 0 or 1, got 2"),
        (_gt_with(1, difficult="yes"), r"ground_truth\['annotations'\]\[1\] .*difficult must be 0 or 1"),
        (dict(GT, images=[{"id": 1}, {"id": 1}]), r"ground_truth\['images'\]\[1\] repeats id 1"),
        (dict(GT, images=[{"id": 1}, {"name": "x"}]), r"ground_truth\['images'\]\[1\] has no 'id'"),
        (dict(GT, categories=[{"id": 1.5}]), r"ground_truth\['categories'\]\[0\]: id must be an integer"),
        ({k: v for k, v in GT.items() if k != "images"}, r"ground truth has no 'images'"),
        ([GT], r"ground truth must be a COCO-format object"),
    ],
)
def test_bad_ground_truth_is_named(gt, pattern):
    for evaluate in (coco_evaluate, voc_evaluate):
        with pytest.raises(DetectionInputError, match=pattern):
            evaluate(gt, DETS)


def test_errors_are_value_errors():
    assert issubclass(DetectionInputError, ValueError)


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "dets.json"
    path.write_text('[{"image_id": 1, "bbox": [1, 2, 3, 4],}]')
    with pytest.raises(DetectionInputError, match=r"dets\.json' is not valid JSON: .* line 1 column"):
        load_json(str(path), "detections")
