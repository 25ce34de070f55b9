"""COCO evaluation: equal to pycocotools' COCOeval (bbox) on random and hand-made datasets."""
import copy

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from research.eval import detection_coco
from research.eval.box_iou import coco_iou
from research.eval.detection import SUMMARY_NAMES, coco_evaluate
from research.eval.detection_data import parse_detections, parse_ground_truth
from research.eval.detection_testing import benchmark_dataset, pycocotools_eval, random_dataset

AGREEMENT_SEEDS = range(240)  # ~2% of them have no detections, which pycocotools cannot evaluate


def _assert_equal_to_pycocotools(gt, dets):
    g = parse_ground_truth(gt)
    arrays = detection_coco.evaluate(g, parse_detections(dets, g))
    ours = coco_evaluate(gt, dets)
    ref = pycocotools_eval(gt, dets)
    assert list(ours)[:12] == list(SUMMARY_NAMES)
    np.testing.assert_allclose([ours[k] for k in SUMMARY_NAMES], ref.stats, rtol=0, atol=1e-9)
    # The arrays behind the summary are bit-identical.
    np.testing.assert_array_equal(arrays.precision, ref.eval["precision"])
    np.testing.assert_array_equal(arrays.recall, ref.eval["recall"])
    # Per-class AP, as detectron2 derives it from pycocotools' precision array.
    for k, cat in enumerate(ref.params.catIds):
        p = ref.eval["precision"][:, :, k, 0, -1]
        expected = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
        assert ours["per_class_AP"][cat] == pytest.approx(expected, abs=1e-9)
    return ours


@pytest.mark.parametrize("seed", AGREEMENT_SEEDS)
def test_random_datasets_agree_with_pycocotools(seed):
    gt, dets = random_dataset(seed)
    if not dets:  # pycocotools' loadRes fails on an empty result list
        result = coco_evaluate(gt, dets)
        has_gt = any(not a["iscrowd"] for a in gt["annotations"])
        assert result["AP"] == (0.0 if has_gt else -1.0)
        return
    _assert_equal_to_pycocotools(gt, dets)


@pytest.mark.parametrize(
    "seed, n_images, n_cats, max_dets",
    [(0, 60, 3, 300), (1, 60, 80, 100), (2, 25, 1, 250)],
)
def test_larger_datasets_agree_with_pycocotools(seed, n_images, n_cats, max_dets):
    """Many detections per image and class (truncation at 100) and realistic box statistics."""
    gt, dets = benchmark_dataset(seed, n_images, n_cats, max_dets)
    result = _assert_equal_to_pycocotools(gt, dets)
    assert 0.1 < result["AP"] < 0.9


def _gt(boxes, cats=None, image_ids=None, **extra):
    cats = cats or [1] * len(boxes)
    image_ids = image_ids or [1] * len(boxes)
    anns = []
    for i, (b, c, img) in enumerate(zip(boxes, cats, image_ids)):
        ann = {"id": i + 1, "image_id": img, "category_id": c, "bbox": list(map(float, b)),
               "area": float(b[2] * b[3]), "iscrowd": 0}
        for key, values in extra.items():
            ann[key] = values[i]
        anns.append(ann)
    n_img = max([1] + list(image_ids))
    n_cat = max([1] + list(cats))
    return {"images": [{"id": i} for i in range(1, n_img + 1)],
            "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_cat + 1)],
            "annotations": anns}


def _det(box, score, image_id=1, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(map(float, box)), "score": score}


def test_crowd_region_absorbs_any_number_of_detections():
    gt = _gt([[0, 0, 200, 200], [300, 300, 50, 50]], iscrowd=[1, 0])
    dets = [_det([10, 10, 50, 50], 0.9), _det([60, 60, 50, 50], 0.8), _det([100, 100, 50, 50], 0.7),
            _det([300, 300, 50, 50], 0.6)]
    result = _assert_equal_to_pycocotools(gt, dets)
    assert result["AP"] == pytest.approx(1.0)  # the three inside the crowd are neither TP nor FP
    # Without the crowd flag they would be false positives ranked above the TP.
    gt["annotations"][0]["iscrowd"] = 0
    assert coco_evaluate(gt, dets)["AP50"] < 0.5


def test_annotation_id_zero_counts_as_unmatched_like_pycocotools():
    gt = _gt([[0, 0, 50, 50]])
    gt["annotations"][0]["id"] = 0
    result = _assert_equal_to_pycocotools(gt, [_det([0, 0, 50, 50], 0.9)])
    assert result["AP"] == 0.0  # pycocotools stores the match as the gt id, and 0 reads as "no match"


def test_equal_scores_keep_input_order_within_an_image():
    gt = _gt([[0, 0, 50, 50]])
    miss, hit = _det([300, 300, 20, 20], 0.5), _det([0, 0, 50, 50], 0.5)
    assert _assert_equal_to_pycocotools(gt, [miss, hit])["AP50"] == pytest.approx(0.5)
    assert _assert_equal_to_pycocotools(gt, [hit, miss])["AP50"] == pytest.approx(1.0)
    # Two equal-score detections on one object: the first listed takes it, whatever its IoU.
    loose, tight = _det([5, 5, 50, 50], 0.5), _det([1, 1, 50, 50], 0.5)
    _assert_equal_to_pycocotools(gt, [loose, tight])
    _assert_equal_to_pycocotools(gt, [tight, loose])


def test_equal_scores_across_images_follow_image_id_order():
    gt = _gt([[0, 0, 50, 50], [0, 0, 50, 50]], image_ids=[1, 2])
    gt["annotations"].pop(0)  # image 1 has no object
    dets = [_det([0, 0, 50, 50], 0.5, image_id=2), _det([0, 0, 50, 50], 0.5, image_id=1)]
    # Image 1's false positive ranks first although it is listed second.
    assert _assert_equal_to_pycocotools(gt, dets)["AP50"] == pytest.approx(0.5)


def test_at_most_100_detections_per_image_and_class():
    gt = _gt([[0, 0, 50, 50]])
    dets = [_det([400 + i, 400, 10, 10], 0.9) for i in range(100)] + [_det([0, 0, 50, 50], 0.1)]
    result = _assert_equal_to_pycocotools(gt, dets)
    assert result["AP"] == 0.0 and result["AR100"] == 0.0  # the 101st is dropped
    dets[-1]["category_id"] = 2  # another class: its own 100
    gt["categories"].append({"id": 2, "name": "c2"})
    gt["annotations"][0]["category_id"] = 2
    assert _assert_equal_to_pycocotools(gt, dets)["AP"] == pytest.approx(1.0)


def test_max_dets_1_and_10_limit_recall():
    gt = _gt([[0, 0, 50, 50], [100, 0, 50, 50], [200, 0, 50, 50]])
    dets = [_det([0, 0, 50, 50], 0.9), _det([100, 0, 50, 50], 0.8), _det([200, 0, 50, 50], 0.7)]
    result = _assert_equal_to_pycocotools(gt, dets)
    assert result["AR1"] == pytest.approx(1 / 3) and result["AR10"] == pytest.approx(1.0)


def test_area_range_bounds_are_inclusive():
    gt = _gt([[0, 0, 32, 32], [100, 100, 96, 96]])  # areas exactly 32² and 96²
    dets = [_det([0, 0, 32, 32], 0.9), _det([100, 100, 96, 96], 0.8)]
    result = _assert_equal_to_pycocotools(gt, dets)
    for name in ("APs", "APm", "APl", "ARs", "ARm", "ARl"):
        assert result[name] == pytest.approx(1.0), name


def test_area_field_not_box_decides_ground_truth_range():
    gt = _gt([[0, 0, 100, 100]], area=[500.0])  # a small mask in a large box
    result = _assert_equal_to_pycocotools(gt, [_det([0, 0, 100, 100], 0.9)])
    assert result["APs"] == pytest.approx(1.0) and result["APl"] == -1.0


def test_classes_without_ground_truth_or_detections():
    gt = _gt([[0, 0, 50, 50], [100, 100, 50, 50]], cats=[1, 2])
    gt["categories"].append({"id": 3, "name": "never"})
    result = _assert_equal_to_pycocotools(gt, [_det([0, 0, 50, 50], 0.9), _det([0, 0, 9, 9], 0.9, category_id=3)])
    assert result["per_class_AP"] == {1: pytest.approx(1.0), 2: 0.0, 3: -1.0}
    assert result["AP"] == pytest.approx(0.5)  # class 3 is left out of the mean


def test_no_detections_at_all():
    gt = _gt([[0, 0, 50, 50]], cats=[2])
    result = coco_evaluate(gt, [])
    assert result["AP"] == 0.0 and result["AR100"] == 0.0 and result["APl"] == -1.0
    assert result["per_class_AP"] == {1: -1.0, 2: 0.0}


def test_worked_example_101_point_ap():
    """The 24-detection worked example (Padilla et al.), TPs placed exactly on their objects."""
    seq = [  # detection letter and TP/FP, by decreasing confidence
        "RT", "YF", "JT", "AF", "UF", "CF", "MF", "FF", "DF", "BT", "HF", "PT",
        "ET", "XT", "NF", "TF", "KF", "QF", "VF", "IF", "LF", "SF", "GT", "OF",
    ]
    images = dict(zip("ABCDEFGHIJKLMNOPQRSTUVXY", [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6,
                                                  7, 7]))
    conf = dict(zip("RYJAUCMFDBHPEXNTKQVILSGO", [95, 95, 91, 88, 84, 80, 78, 74, 71, 70, 67, 62, 54, 48, 45, 45,
                                                  44, 44, 43, 38, 35, 23, 18, 14]))
    gt_images = [1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    gt = _gt([[40 * i, 0, 30, 30] for i in range(15)], image_ids=gt_images)
    free = {img: [i for i, g in enumerate(gt_images) if g == img] for img in set(gt_images)}
    dets = []
    for letter, kind in seq:
        img = images[letter]
        box = [40 * free[img].pop(0), 0, 30, 30] if kind == "T" else [900, 900, 10, 10]
        dets.append(_det(box, conf[letter] / 100, image_id=img))
    dets.reverse()  # listing order must not matter: only ties do, and those follow image order
    result = _assert_equal_to_pycocotools(gt, dets)
    # Envelope 1 up to recall 1/15 (7 points), 2/3 to 2/15 (7), 3/7 to 6/15 (27), 7/23 to 7/15 (6).
    expected = (7 * 1 + 7 * 2 / 3 + 27 * 3 / 7 + 6 * 7 / 23) / 101
    assert expected == pytest.approx(0.2482, abs=1e-4)
    for name in ("AP", "AP50", "AP75"):
        assert result[name] == pytest.approx(expected, abs=1e-12), name
    assert result["AR100"] == pytest.approx(7 / 15)


def test_iou_is_bit_identical_to_pycocotools():
    rng = np.random.default_rng(0)
    dt = np.round(rng.uniform(0, 60, size=(300, 4)), int(rng.integers(0, 3)))
    gt = np.round(rng.uniform(0, 60, size=(40, 4)), 1)
    gt[:5, 2] = 0.0  # zero-width boxes
    crowd = rng.random(40) < 0.3
    ref = mask_utils.iou(dt.tolist(), gt.tolist(), crowd.astype(np.uint8).tolist())
    np.testing.assert_array_equal(coco_iou(dt[:, None], gt[None], crowd[None]), ref)


def test_inputs_are_not_modified():
    gt, dets = random_dataset(3)
    before = copy.deepcopy((gt, dets))
    coco_evaluate(gt, dets)
    assert (gt, dets) == before


@pytest.mark.parametrize("seed", range(5))
def test_string_image_ids_sort_like_pycocotools(seed):
    """Ties across images follow sorted ids, so "img10" comes before "img9" as in np.unique."""
    gt, dets = random_dataset(seed)
    name = {im["id"]: f"img{im['id']}" for im in gt["images"]}
    for entry in gt["images"]:
        entry["id"] = name[entry["id"]]
    for entry in gt["annotations"] + dets:
        entry["image_id"] = name[entry["image_id"]]
    _assert_equal_to_pycocotools(gt, dets)
