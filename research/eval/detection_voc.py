"""PASCAL VOC detection AP: the 11-point (VOC2007) and all-point (VOC2010+) metrics.

The formulas are those of the VOC devkit (``VOCevaldet.m``, ``VOCap.m``) and of
its Python port in py-faster-rcnn (``voc_eval.py``):

* detections of a class are taken in decreasing score (ties: input order);
* each is compared with every ground truth of its class in its image and
  assigned the one of largest IoU (the first of equal ones), whether or not that
  one is already taken;
* if that IoU is >= the threshold (the devkit's ``ovmax >= minoverlap``; 0.5):
  a "difficult" ground truth makes the detection ignored (neither TP nor FP),
  otherwise the first detection to reach it is a TP and later ones are FPs
  (duplicates); below the threshold the detection is an FP;
* recall ``tp / npos`` (npos: non-difficult ground truths), precision
  ``tp / max(tp + fp, eps)``, both along the score order;
* AP07: mean over t in {0, 0.1, ..., 1} of the maximum precision at recall >= t
  (0 where none); AP12: area under the monotone precision envelope.

Unlike COCO's matching, a detection whose best ground truth is already taken
does not fall back to its second best.
"""
from __future__ import annotations

import numpy as np

from research.eval.box_iou import voc_iou
from research.eval.detection_data import Detections, GroundTruth

_RECALL_POINTS_07 = np.arange(0.0, 1.1, 0.1)  # the devkit's 0:0.1:1, as py-faster-rcnn builds it


def voc_ap(recall, precision, use_07_metric: bool = False) -> float:
    """AP from a precision/recall curve (arrays along decreasing score)."""
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision differ in length: {rec.size} vs {prec.size}")
    if use_07_metric:
        at_or_above = rec[None, :] >= _RECALL_POINTS_07[:, None]
        best = np.where(at_or_above, prec[None, :], -np.inf).max(axis=1, initial=-np.inf)
        best = np.where(at_or_above.any(axis=1), best, 0.0)
        ap = 0.0
        for p in best:  # the devkit's running sum, in its order
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_match(
    det_group: np.ndarray,
    det_box: np.ndarray,
    det_score: np.ndarray,
    gt_group: np.ndarray,
    gt_box: np.ndarray,
    gt_difficult: np.ndarray,
    iou_threshold: float = 0.5,
    pixel_offset: float = 0.0,
):
    """VOC matching of detections to ground truths in the same group (image, or image and class).

    Boxes are ``[x1, y1, x2, y2]``. Returns ``(order, tp, fp)``: the detections'
    indices in decreasing score (stable), and float TP / FP flags along it (both
    0 for an ignored detection).
    """
    det_group = np.asarray(det_group, dtype=np.int64)
    gt_group = np.asarray(gt_group, dtype=np.int64)
    det_box = np.asarray(det_box, dtype=np.float64).reshape(-1, 4)
    gt_box = np.asarray(gt_box, dtype=np.float64).reshape(-1, 4)
    gt_difficult = np.asarray(gt_difficult, dtype=bool)
    order = np.argsort(-np.asarray(det_score, dtype=np.float64), kind="stable")
    n = order.size

    # Best ground truth of each detection, over all pairs within its group.
    g_order = np.argsort(gt_group, kind="stable")
    g_sorted = gt_group[g_order]
    lo = np.searchsorted(g_sorted, det_group[order], side="left")
    count = np.searchsorted(g_sorted, det_group[order], side="right") - lo
    pair_det = np.repeat(np.arange(n), count)  # position in score order
    local = np.arange(pair_det.size) - np.repeat(np.cumsum(count) - count, count)
    pair_gt = g_order[lo[pair_det] + local]
    ov = voc_iou(det_box[order][pair_det], gt_box[pair_gt], pixel_offset)
    # Per detection, the first pair of maximal overlap: sort by (detection, -overlap), stably.
    best = np.lexsort((-ov, pair_det))
    first = np.ones(best.size, dtype=bool)
    first[1:] = pair_det[best][1:] != pair_det[best][:-1]
    best = best[first]
    ovmax = np.full(n, -np.inf)
    jmax = np.full(n, -1, dtype=np.int64)
    ovmax[pair_det[best]] = ov[best]
    jmax[pair_det[best]] = pair_gt[best]

    hit = ovmax >= iou_threshold
    ignored = hit & gt_difficult[np.maximum(jmax, 0)]
    counts = hit & ~ignored
    tp = np.zeros(n)
    # The first detection (in score order) to reach a ground truth is the TP; np.unique returns first indices.
    candidates = np.flatnonzero(counts)
    _, first_hit = np.unique(jmax[candidates], return_index=True)
    tp[candidates[first_hit]] = 1.0
    fp = np.where(ignored, 0.0, 1.0 - tp)
    return order, tp, fp


def voc_pr(tp: np.ndarray, fp: np.ndarray, npos: int):
    """Recall and precision along the score order, as the devkit computes them."""
    tp = np.cumsum(tp)
    fp = np.cumsum(fp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec


def evaluate(
    gt: GroundTruth,
    dt: Detections,
    *,
    use_07_metric: bool,
    iou_threshold: float = 0.5,
    pixel_offset: float = 0.0,
) -> dict:
    """Per-class AP and mAP; a ground truth is difficult if flagged ``difficult`` or ``iscrowd``.

    Classes without a non-difficult ground truth get AP -1 and are left out of the mean.
    """
    n_img = gt.num_images
    difficult = gt.difficult | gt.iscrowd
    order, tp, fp = voc_match(
        dt.category * n_img + dt.image,
        _xyxy(dt.box),
        dt.score,
        gt.category * n_img + gt.image,
        _xyxy(gt.box),
        difficult,
        iou_threshold=iou_threshold,
        pixel_offset=pixel_offset,
    )
    det_cat = dt.category[order]
    npos = np.bincount(gt.category[~difficult], minlength=gt.num_categories)
    per_class = {}
    for k, cat in enumerate(gt.category_ids):
        if npos[k] == 0:
            per_class[cat] = -1.0
            continue
        mine = det_cat == k  # stays in score order
        rec, prec = voc_pr(tp[mine], fp[mine], int(npos[k]))
        per_class[cat] = voc_ap(rec, prec, use_07_metric)
    defined = [v for v in per_class.values() if v != -1.0]
    return {"mAP": float(np.mean(defined)) if defined else -1.0, "per_class_AP": per_class}


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
