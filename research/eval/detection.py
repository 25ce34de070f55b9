"""Detection mAP: COCO (equal to pycocotools' COCOeval for boxes), VOC07 11-point and VOC all-point.

Inputs are COCO-format for every metric:

* ``ground_truth``: ``{"images": [{"id"}], "categories": [{"id", "name"}],
  "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h],
  "area"?, "iscrowd"?, "difficult"?}]}``;
* ``detections``: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``.

``coco_evaluate`` returns pycocotools' 12 summary numbers (AP, AP50, AP75, APs,
APm, APl, AR1, AR10, AR100, ARs, ARm, ARl; -1 where undefined) and
``per_class_AP`` (AP@[.50:.95] per category id). ``voc_evaluate`` returns
``mAP`` and ``per_class_AP`` under the 11-point or the all-point metric.
Malformed input raises `DetectionInputError` (a ValueError) naming the entry.

Command line::

    python -m research.eval.detection --gt gt.json --dets dets.json [--metric coco|voc07|voc12]
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from research.eval import detection_coco, detection_voc
from research.eval.detection_data import DetectionInputError, load_json, parse_detections, parse_ground_truth
from research.eval.detection_voc import voc_ap

__all__ = ["SUMMARY_NAMES", "DetectionInputError", "coco_evaluate", "main", "voc_ap", "voc_evaluate"]

SUMMARY_NAMES = tuple(row[0] for row in detection_coco.SUMMARY)


def coco_evaluate(ground_truth: dict, detections: list) -> dict:
    """COCO box evaluation: the 12 summary numbers by name, then ``per_class_AP`` {category id: AP}."""
    gt = parse_ground_truth(ground_truth)
    arrays = detection_coco.evaluate(gt, parse_detections(detections, gt))
    out: dict[str, Any] = detection_coco.summarize(arrays)
    out["per_class_AP"] = detection_coco.per_class_ap(arrays)
    return out


def voc_evaluate(
    ground_truth: dict,
    detections: list,
    *,
    use_07_metric: bool = False,
    iou_threshold: float = 0.5,
    pixel_offset: float = 0.0,
) -> dict:
    """VOC evaluation: ``{"mAP", "per_class_AP": {category id: AP}}``; difficult/crowd boxes are ignored.

    ``pixel_offset=1`` uses the devkit's inclusive-pixel widths (``x2 - x1 + 1``); the default 0 suits
    continuous COCO-style boxes.
    """
    gt = parse_ground_truth(ground_truth)
    return detection_voc.evaluate(
        gt,
        parse_detections(detections, gt),
        use_07_metric=use_07_metric,
        iou_threshold=iou_threshold,
        pixel_offset=pixel_offset,
    )


# --------------------------------------------------------------------------- command line

def _class_table(per_class: dict, names: dict) -> list[str]:
    width = max([len("category")] + [len(names[c]) for c in per_class])
    lines = [f"{'id':>6}  {'category':<{width}}  {'AP':>7}", f"{'-' * 6}  {'-' * width}  {'-' * 7}"]
    for cat, ap in per_class.items():
        value = "    n/a" if ap == -1 else f"{100 * ap:7.2f}"
        lines.append(f"{cat!s:>6}  {names[cat]:<{width}}  {value}")
    return lines


def format_report(result: dict, metric: str, category_names: dict, iou_threshold: float = 0.5) -> str:
    lines = []
    if metric == "coco":
        for name, is_ap, iou, area, max_dets in detection_coco.SUMMARY:  # pycocotools' lines
            title = "Average Precision  (AP)" if is_ap else "Average Recall     (AR)"
            iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
            lines.append(
                f" {title} @[ IoU={iou_text:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {result[name]:0.3f}"
                f"   {name}"
            )
        lines.append("")
        lines.append("Per-class AP@[.50:.95] (%):")
    else:
        kind = "VOC07 11-point" if metric == "voc07" else "VOC all-point"
        lines.append(f"Per-class AP@{iou_threshold:g}, {kind} (%):")
    lines += _class_table(result["per_class_AP"], category_names)
    if metric != "coco":
        lines.append(f"mAP = {100 * result['mAP']:.2f}" if result["mAP"] != -1 else "mAP = n/a")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m research.eval.detection", description="Detection mAP (COCO, VOC07, VOC all-point)."
    )
    parser.add_argument("--gt", required=True, help="COCO-format ground-truth JSON")
    parser.add_argument("--dets", required=True, help="JSON list of {image_id, category_id, bbox, score}")
    parser.add_argument("--metric", choices=("coco", "voc07", "voc12"), default="coco")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="VOC metrics only (default 0.5)")
    parser.add_argument(
        "--pixel-offset", type=float, default=0.0, choices=(0.0, 1.0),
        help="VOC metrics only: 1 for the devkit's inclusive-pixel box widths (default 0)",
    )
    args = parser.parse_args(argv)
    try:
        gt_json = load_json(args.gt, "ground-truth")
        dets_json = load_json(args.dets, "detections")
        if args.metric == "coco":
            result = coco_evaluate(gt_json, dets_json)
        else:
            result = voc_evaluate(
                gt_json,
                dets_json,
                use_07_metric=args.metric == "voc07",
                iou_threshold=args.iou_threshold,
                pixel_offset=args.pixel_offset,
            )
    except (OSError, DetectionInputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt_json["categories"]}
    print(format_report(result, args.metric, names, args.iou_threshold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
