"""Intersection over union of axis-aligned boxes, in the two conventions in use.

* `coco_iou`: boxes ``[x, y, w, h]``; the same floating-point operations, in the
  same order, as pycocotools' ``maskUtils.iou`` for boxes (``bbIou`` in
  ``maskApi.c``), so the results are bit-identical. Against a crowd ground
  truth the union is the detection's own area (the fraction of the detection
  that lies inside the crowd region).
* `voc_iou`: boxes ``[x1, y1, x2, y2]``; the VOC devkit's formula, with
  ``pixel_offset=1`` for its inclusive integer pixel coordinates
  (``x2 - x1 + 1`` wide) or ``0`` for continuous coordinates.

Both take broadcastable arrays with a trailing axis of 4, so ``a[:, None]``
against ``b[None, :]`` gives the full matrix and equal-length arrays give the
IoU of each pair.
"""
from __future__ import annotations

import numpy as np


def coco_iou(dt: np.ndarray, gt: np.ndarray, gt_iscrowd: np.ndarray | bool = False) -> np.ndarray:
    """IoU of detections `dt` with ground truths `gt` (``[..., 4]`` x y w h), pycocotools-exact."""
    dt = np.asarray(dt, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    dx, dy, dw, dh = np.moveaxis(dt, -1, 0)
    gx, gy, gw, gh = np.moveaxis(gt, -1, 0)
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    da = dw * dh
    union = np.where(gt_iscrowd, da, da + gw * gh - inter)
    overlap = (w > 0) & (h > 0)
    return np.divide(inter, union, out=np.zeros(overlap.shape), where=overlap)


def voc_iou(a: np.ndarray, b: np.ndarray, pixel_offset: float = 0.0) -> np.ndarray:
    """IoU of boxes `a` with boxes `b` (``[..., 4]`` x1 y1 x2 y2), the VOC devkit's formula."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ax1, ay1, ax2, ay2 = np.moveaxis(a, -1, 0)
    bx1, by1, bx2, by2 = np.moveaxis(b, -1, 0)
    iw = np.maximum(np.minimum(bx2, ax2) - np.maximum(bx1, ax1) + pixel_offset, 0.0)
    ih = np.maximum(np.minimum(by2, ay2) - np.maximum(by1, ay1) + pixel_offset, 0.0)
    inter = iw * ih
    union = (ax2 - ax1 + pixel_offset) * (ay2 - ay1 + pixel_offset) + (
        bx2 - bx1 + pixel_offset
    ) * (by2 - by1 + pixel_offset) - inter
    return np.divide(inter, union, out=np.zeros(np.shape(inter)), where=inter > 0)
