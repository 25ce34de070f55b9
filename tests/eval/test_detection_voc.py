"""VOC AP: hand-computed worked examples, and a loop-for-loop port of the devkit's formulas."""
import json
import pathlib

import numpy as np
import pytest

from research.eval.detection import voc_ap, voc_evaluate
from research.eval.detection_testing import random_dataset
from research.eval.detection_voc import voc_pr

FIXTURES = pathlib.Path(__file__).parent / "fixtures"

# The worked example of Padilla et al. ("Object-Detection-Metrics"): 7 images, 15 objects,
# 24 detections; TP/FP at IoU >= 0.3, in decreasing confidence.
WORKED_TP = [int(c == "T") for c in "TFTFFFFFFTFTTTFFFFFFFFTF"]
AP07 = (1 + 2 / 3 + 3 * (3 / 7)) / 11  # recall levels 0 | 0.1 | 0.2, 0.3, 0.4; nothing at >= 0.5
AP12 = 1 / 15 * 1 + 1 / 15 * (2 / 3) + 4 / 15 * (3 / 7) + 1 / 15 * (7 / 23)  # four rectangles


def _worked_curve():
    tp = np.array(WORKED_TP, dtype=float)
    return voc_pr(tp, 1 - tp, npos=15)


def test_worked_example_11_point_vs_all_point():
    rec, prec = _worked_curve()
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(AP07, abs=1e-12)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(AP12, abs=1e-12)
    assert round(100 * AP07, 2) == 26.84 and round(100 * AP12, 2) == 24.57  # the published 26.84% / 24.56%
    assert AP07 - AP12 > 0.02  # the same detections, two metrics


def test_small_curve_by_hand():
    # Recall 0.5 at precision 1, then 1.0 at precision 0.5.
    assert voc_ap([0.5, 1.0], [1.0, 0.5], True) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert voc_ap([0.5, 1.0], [1.0, 0.5], False) == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    # A later, higher precision lifts the envelope (all-point) and the 11-point maxima.
    assert voc_ap([0.2, 0.2, 0.4], [1.0, 0.5, 0.6], False) == pytest.approx(0.2 * 1.0 + 0.2 * 0.6)
    assert voc_ap([0.2, 0.2, 0.4], [1.0, 0.5, 0.6], True) == pytest.approx((3 * 1.0 + 2 * 0.6) / 11)
    assert voc_ap([], [], True) == 0.0 and voc_ap([], [], False) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        voc_ap([0.1, 0.2], [1.0], False)


def test_worked_example_from_boxes():
    gt = json.loads((FIXTURES / "detection_gt.json").read_text())
    dets = json.loads((FIXTURES / "detection_dets.json").read_text())
    kw = {"iou_threshold": 0.3, "pixel_offset": 1.0}  # the example counts pixels inclusively
    assert voc_evaluate(gt, dets, use_07_metric=True, **kw)["per_class_AP"][1] == pytest.approx(AP07, abs=1e-12)
    assert voc_evaluate(gt, dets, use_07_metric=False, **kw)["per_class_AP"][1] == pytest.approx(AP12, abs=1e-12)
    # With continuous coordinates detection G's IoU is 1176/3983 = 0.295 < 0.3: it becomes an FP.
    cont = voc_evaluate(gt, dets, use_07_metric=False, iou_threshold=0.3)["per_class_AP"][1]
    assert cont == pytest.approx(AP12 - 1 / 15 * (7 / 23), abs=1e-12)


def test_difficult_objects_are_ignored():
    gt = json.loads((FIXTURES / "detection_gt.json").read_text())
    dets = json.loads((FIXTURES / "detection_dets.json").read_text())
    # "dog": a TP (IoU 0.95), then a detection on a difficult dog (ignored), then an FP; 2 countable dogs.
    r07 = voc_evaluate(gt, dets, use_07_metric=True)
    r12 = voc_evaluate(gt, dets, use_07_metric=False)
    assert r07["per_class_AP"][2] == pytest.approx(6 / 11)  # precision 1 up to recall 0.5
    assert r12["per_class_AP"][2] == pytest.approx(0.5)
    # "cat" has no objects (left out of the mean); "bird" has one but no detection (AP 0).
    assert r12["per_class_AP"][3] == -1.0 and r12["per_class_AP"][4] == 0.0
    assert r12["mAP"] == pytest.approx(np.mean([r12["per_class_AP"][c] for c in (1, 2, 4)]))
    # Not difficult, the second detection is a TP and recall reaches 2/3.
    for a in gt["annotations"]:
        a.pop("difficult", None)
    assert voc_evaluate(gt, dets)["per_class_AP"][2] == pytest.approx(2 / 3)


def test_a_duplicate_is_a_false_positive_even_when_another_object_is_free():
    gt = {"images": [{"id": 1}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [6, 0, 10, 10]}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.8}]
    # The second detection's best object (IoU 0.82) is taken; VOC does not fall back to the other (0.33).
    assert voc_evaluate(gt, dets, iou_threshold=0.3)["per_class_AP"][1] == pytest.approx(0.5)


# --------------------------------------------------------------------------- devkit reference


def _devkit_ap(rec, prec, use_07_metric):
    """VOCap.m / voc_eval.py's voc_ap, loop for loop."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def _devkit_class_ap(gt, dets, cat, use_07_metric, thr, offset):
    """VOCevaldet.m for one class: best-overlap assignment, difficult ignored, duplicates FP."""
    recs = {}
    for a in gt["annotations"]:
        if a["category_id"] == cat:
            x, y, w, h = a["bbox"]
            recs.setdefault(a["image_id"], []).append(([x, y, x + w, y + h], bool(a.get("difficult") or a["iscrowd"])))
    npos = sum(not d for objs in recs.values() for _, d in objs)
    mine = [d for d in dets if d["category_id"] == cat]
    order = sorted(range(len(mine)), key=lambda i: -mine[i]["score"])  # stable, like Matlab's sort
    taken = {img: [False] * len(objs) for img, objs in recs.items()}
    tp, fp = np.zeros(len(mine)), np.zeros(len(mine))
    for rank, i in enumerate(order):
        x, y, w, h = mine[i]["bbox"]
        bb = [x, y, x + w, y + h]
        ovmax, jmax = -np.inf, -1
        for j, (g, _) in enumerate(recs.get(mine[i]["image_id"], [])):
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + offset
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + offset
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + offset) * (bb[3] - bb[1] + offset) + (g[2] - g[0] + offset) * (
                    g[3] - g[1] + offset) - iw * ih
                if iw * ih / ua > ovmax:
                    ovmax, jmax = iw * ih / ua, j
        if ovmax >= thr:
            if not recs[mine[i]["image_id"]][jmax][1]:
                if not taken[mine[i]["image_id"]][jmax]:
                    tp[rank] = 1
                    taken[mine[i]["image_id"]][jmax] = True
                else:
                    fp[rank] = 1
        else:
            fp[rank] = 1
    if npos == 0:
        return -1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return _devkit_ap(tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps), use_07_metric)


@pytest.mark.parametrize("seed", range(60))
def test_random_datasets_agree_with_devkit_formulas(seed):
    gt, dets = random_dataset(1000 + seed)
    rng = np.random.default_rng(seed)
    for a in gt["annotations"]:
        a["difficult"] = int(rng.random() < 0.15)
    use_07, offset = bool(seed % 2), float(seed // 2 % 2)
    thr = [0.5, 0.3, 0.7][seed % 3]
    result = voc_evaluate(gt, dets, use_07_metric=use_07, iou_threshold=thr, pixel_offset=offset)
    expected = {c["id"]: _devkit_class_ap(gt, dets, c["id"], use_07, thr, offset) for c in gt["categories"]}
    assert result["per_class_AP"] == pytest.approx(expected, abs=1e-12)
    defined = [v for v in expected.values() if v != -1.0]
    assert result["mAP"] == pytest.approx(np.mean(defined) if defined else -1.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_voc_ap_matches_devkit_loop(seed):
    rng = np.random.default_rng(seed)
    tp = (rng.random(int(rng.integers(0, 60))) < 0.5).astype(float)
    rec, prec = voc_pr(tp, 1 - tp, npos=int(tp.sum()) + int(rng.integers(1, 5)))
    for use_07 in (True, False):
        assert voc_ap(rec, prec, use_07) == _devkit_ap(rec, prec, use_07)
