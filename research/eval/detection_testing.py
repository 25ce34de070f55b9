"""Seeded synthetic COCO-format datasets, and pycocotools as the reference, for tests and benchmarks.

`random_dataset` makes small adversarial datasets: crowd boxes, areas on the
range boundaries (32², 96²) and an ``area`` field that differs from ``w * h``,
tiny (zero-width) and huge (area > 1e10) boxes, integer boxes whose IoU lands
exactly on a threshold, identical ground truths, duplicate detections, score
ties, more than 100 detections in one image and class, classes without ground
truth or without detections, images with neither. `benchmark_dataset` makes a
COCO-sized one (images × 80 classes, up to 100 detections per image).

`pycocotools_eval` runs pycocotools' COCOeval (a test-only dependency) on
copies of the inputs, silently, and returns the evaluator.
"""
from __future__ import annotations

import contextlib
import io
import time

import numpy as np


def _box(rng: np.random.Generator, kind: str) -> list:
    if kind == "tiny":
        w, h = rng.choice([0.0, 0.5, 1.0, 2.0]), rng.choice([0.0, 1.0, 3.0])
    elif kind == "boundary":
        w = h = float(rng.choice([32, 96]))
    elif kind == "huge":
        w, h = rng.uniform(1e5, 2e5, size=2)
    elif kind == "int":
        w, h = rng.integers(1, 60, size=2).astype(float)
    else:
        w, h = np.exp(rng.uniform(np.log(2), np.log(300), size=2))
    x, y = rng.uniform(0, 400, size=2)
    if kind in ("int", "boundary"):
        x, y = float(int(x)), float(int(y))
    return [float(x), float(y), float(w), float(h)]


def _jitter(rng: np.random.Generator, box: list, scale: float, integer: bool) -> list:
    x, y, w, h = box
    dx, dy = rng.normal(0, scale * max(w, 1.0), size=2)
    sw, sh = np.exp(rng.normal(0, scale, size=2))
    out = [x + dx, y + dy, w * sw, h * sh]
    if integer:
        out = [float(round(v)) for v in out]
    return [float(v) for v in out]


def random_dataset(seed: int) -> tuple[dict, list]:
    """A small, adversarial COCO-format (ground truth, detections) pair."""
    rng = np.random.default_rng(seed)
    n_images = int(rng.integers(1, 10))
    n_cats = int(rng.integers(1, 6))
    image_ids = [int(i) for i in rng.choice(np.arange(1, 1000), size=n_images, replace=False)]
    cat_ids = [int(c) for c in rng.choice(np.arange(1, 100), size=n_cats, replace=False)]
    used_cats = cat_ids if n_cats == 1 or rng.random() < 0.5 else cat_ids[:-1]  # maybe one class without GT
    p_crowd = rng.choice([0.0, 0.1, 0.3])
    integer = rng.random() < 0.4
    kinds = ["normal"] * 6 + ["int"] * 3 + ["tiny", "boundary", "huge"]
    score_grid = rng.choice([0, 1, 2, 10])  # 0: continuous scores, else ties on a coarse grid

    annotations, detections = [], []
    for img in image_ids:
        for _ in range(int(rng.integers(0, 7))):
            cat = int(rng.choice(used_cats))
            box = _box(rng, "int" if integer else str(rng.choice(kinds)))
            if annotations and rng.random() < 0.1:  # an identical ground truth (IoU ties)
                prev = annotations[int(rng.integers(len(annotations)))]
                box, cat, img_ = list(prev["bbox"]), prev["category_id"], prev["image_id"]
            else:
                img_ = img
            area = box[2] * box[3]
            if rng.random() < 0.3:  # a segmentation area, smaller than the box
                area *= float(rng.uniform(0.3, 1.0))
            if rng.random() < 0.05:
                area = float(rng.choice([32**2, 96**2]))
            annotations.append(
                {"image_id": img_, "category_id": cat, "bbox": box, "area": area,
                 "iscrowd": int(rng.random() < p_crowd)}
            )
    if rng.random() < 0.1:  # a crowded image: many ground truths of one class (wide matching buckets)
        img, cat = int(rng.choice(image_ids)), int(rng.choice(used_cats))
        for _ in range(int(rng.integers(5, 40))):
            box = _box(rng, "int" if integer else "normal")
            annotations.append({"image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                                "iscrowd": int(rng.random() < p_crowd)})
    order = rng.permutation(len(annotations))
    annotations = [annotations[i] for i in order]
    ids = rng.permutation(len(annotations)) + 1
    for a, i in zip(annotations, ids):
        a["id"] = int(i)
    if annotations and rng.random() < 0.05:
        annotations[int(rng.integers(len(annotations)))]["id"] = 0  # pycocotools' id-0 quirk

    det_cats = cat_ids if n_cats == 1 or rng.random() < 0.7 else cat_ids[1:]  # maybe one class never detected
    for a in annotations:
        for _ in range(int(rng.integers(0, 4))):
            cat = a["category_id"] if rng.random() < 0.85 or len(det_cats) == 1 else int(rng.choice(det_cats))
            if cat not in det_cats:
                continue
            box = list(a["bbox"]) if rng.random() < 0.15 else _jitter(rng, a["bbox"], rng.choice([0.05, 0.15, 0.4]),
                                                                      integer)
            detections.append({"image_id": a["image_id"], "category_id": cat, "bbox": box})
    for img in image_ids:
        for _ in range(int(rng.integers(0, 5))):
            detections.append({"image_id": img, "category_id": int(rng.choice(det_cats)),
                               "bbox": _box(rng, "int" if integer else str(rng.choice(kinds)))})
    if detections and rng.random() < 0.3:  # exact duplicates
        for _ in range(int(rng.integers(1, 6))):
            detections.append(dict(detections[int(rng.integers(len(detections)))]))
    if rng.random() < 0.08:  # one image and class with more than 100 detections
        img, cat = int(rng.choice(image_ids)), int(rng.choice(det_cats))
        base = _box(rng, "normal")
        for _ in range(int(rng.integers(101, 140))):
            detections.append({"image_id": img, "category_id": cat, "bbox": _jitter(rng, base, 0.2, integer)})
    for d in detections:
        s = rng.random()
        d["score"] = float(np.round(s * score_grid) / score_grid) if score_grid else float(s)
    detections = [detections[i] for i in rng.permutation(len(detections))]

    images = [{"id": i} for i in image_ids]
    categories = [{"id": c, "name": f"class{c}"} for c in cat_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def benchmark_dataset(seed: int = 0, n_images: int = 5000, n_cats: int = 80, max_dets: int = 100):
    """COCO-like sizes: ~7 objects per image, up to `max_dets` detections per image over all classes."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 640, "height": 480} for i in range(n_images)]
    categories = [{"id": c + 1, "name": f"class{c + 1}"} for c in range(n_cats)]
    cat_p = rng.dirichlet(np.full(n_cats, 0.5))
    annotations, detections = [], []
    for img in range(1, n_images + 1):
        n_obj = int(min(rng.geometric(1 / 7.0), 50))
        cats = rng.choice(n_cats, size=n_obj, p=cat_p) + 1
        wh = np.exp(rng.uniform(np.log(4), np.log(400), size=(n_obj, 2)))
        xy = rng.uniform(0, 1, size=(n_obj, 2)) * np.maximum(640 - wh, 1)
        crowd = rng.random(n_obj) < 0.01
        boxes = np.round(np.concatenate([xy, wh], axis=1), 2)
        for box, cat, c in zip(boxes.tolist(), cats.tolist(), crowd.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": img, "category_id": cat, "bbox": box,
                                "area": box[2] * box[3] * 0.8, "iscrowd": int(c)})
        n_det = int(rng.integers(max_dets // 2, max_dets + 1))
        n_true = min(n_det, 3 * n_obj)
        src = rng.integers(0, max(n_obj, 1), size=n_true)
        det_boxes, det_cats = [], []
        if n_obj:
            b = boxes[src]
            jitter = rng.normal(0, 0.1, size=(n_true, 4)) * np.concatenate([b[:, 2:], b[:, 2:]], axis=1)
            det_boxes.append(np.concatenate([b[:, :2] + jitter[:, :2], np.abs(b[:, 2:] + jitter[:, 2:])], axis=1))
            wrong = rng.random(n_true) < 0.2
            det_cats.append(np.where(wrong, rng.choice(n_cats, size=n_true, p=cat_p) + 1, cats[src]))
        n_rand = n_det - (n_true if n_obj else 0)
        wh = np.exp(rng.uniform(np.log(4), np.log(400), size=(n_rand, 2)))
        det_boxes.append(np.concatenate([rng.uniform(0, 1, size=(n_rand, 2)) * np.maximum(640 - wh, 1), wh], axis=1))
        det_cats.append(rng.choice(n_cats, size=n_rand, p=cat_p) + 1)
        det_boxes = np.round(np.concatenate(det_boxes), 2)
        det_cats = np.concatenate(det_cats)
        n_good = n_true if n_obj else 0  # detections near an object score higher, on average
        scores = np.concatenate([rng.beta(3, 2, size=n_good), rng.beta(1, 4, size=det_cats.size - n_good)])
        scores = np.round(scores, 3)  # 3 decimals: many ties
        for box, cat, s in zip(det_boxes.tolist(), det_cats.tolist(), scores.tolist()):
            detections.append({"image_id": img, "category_id": cat, "bbox": box, "score": s})
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def pycocotools_eval(ground_truth: dict, detections: list, timings: dict | None = None):
    """pycocotools' COCOeval (bbox) after evaluate + accumulate + summarize, on copies, output silenced.

    `timings`, if given, receives the wall-clock seconds of each phase: load (index + loadRes),
    evaluate, accumulate, summarize; and the process CPU seconds under the same names + "_cpu".
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    timings = {} if timings is None else timings
    gt_copy = dict(ground_truth, annotations=[dict(a) for a in ground_truth["annotations"]])
    dets_copy = [dict(d) for d in detections]  # loadRes and evaluate add keys to the dicts
    with contextlib.redirect_stdout(io.StringIO()):
        t, c = time.perf_counter(), time.process_time()
        gt = COCO()
        gt.dataset = gt_copy
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets_copy), "bbox")
        for phase, run in (("load", None), ("evaluate", ev.evaluate), ("accumulate", ev.accumulate),
                           ("summarize", ev.summarize)):
            if run is not None:
                run()
            now, now_c = time.perf_counter(), time.process_time()
            timings[phase], timings[phase + "_cpu"], t, c = now - t, now_c - c, now, now_c
    return ev
