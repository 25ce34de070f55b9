"""Times `coco_evaluate` against pycocotools' evaluate + accumulate + summarize, and checks equality.

    python -m scripts.bench_detection [--images 5000] [--classes 80] [--max-dets 100] [--repeats 3]

The dataset is synthetic and seeded (`research.eval.detection_testing.benchmark_dataset`):
~7 objects per image (1% crowds), between max_dets/2 and max_dets detections per image over all
classes, scores rounded to 3 decimals (many ties). Our time is the whole call (input
validation included); pycocotools' is the three phases the issue names, with its index
building and loadRes reported beside it. Writes the table to experiments/results/detection_bench.md.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

from research.eval import detection_coco
from research.eval.detection import SUMMARY_NAMES, coco_evaluate, voc_evaluate
from research.eval.detection_data import parse_detections, parse_ground_truth
from research.eval.detection_testing import benchmark_dataset, pycocotools_eval

REPO = pathlib.Path(__file__).resolve().parents[1]


def _timed(fn, repeats):
    """(result, best wall seconds, median wall seconds, best CPU seconds) over `repeats` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return result, min(wall), statistics.median(wall), min(cpu)


def _flags(args: argparse.Namespace) -> str:
    defaults = {"images": 5000, "classes": 80, "max_dets": 100, "seed": 0}
    return "".join(
        f" --{k.replace('_', '-')} {getattr(args, k)}" for k, v in defaults.items() if getattr(args, k) != v
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--max-dets", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "experiments/results/detection_bench.md"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    gt, dets = benchmark_dataset(args.seed, args.images, args.classes, args.max_dets)
    print(f"{len(gt['images'])} images, {len(gt['categories'])} classes, {len(gt['annotations'])} objects, "
          f"{len(dets)} detections", flush=True)

    ours, best, median, best_cpu = _timed(lambda: coco_evaluate(gt, dets), args.repeats)
    print(f"coco_evaluate: best {best:.2f} s, median {median:.2f} s, CPU {best_cpu:.2f} s", flush=True)
    voc = {
        metric: _timed(lambda use_07=metric == "voc07": voc_evaluate(gt, dets, use_07_metric=use_07), args.repeats)[1]
        for metric in ("voc07", "voc12")
    }

    t: dict = {}
    ref = pycocotools_eval(gt, dets, timings=t)
    ref_wall = t["evaluate"] + t["accumulate"] + t["summarize"]
    ref_cpu = t["evaluate_cpu"] + t["accumulate_cpu"] + t["summarize_cpu"]
    print(f"pycocotools: load {t['load']:.1f} s, evaluate {t['evaluate']:.1f} s, accumulate {t['accumulate']:.1f} s, "
          f"summarize {t['summarize']:.2f} s; CPU {ref_cpu:.1f} s", flush=True)

    g = parse_ground_truth(gt)
    arrays = detection_coco.evaluate(g, parse_detections(dets, g))
    same_arrays = np.array_equal(arrays.precision, ref.eval["precision"]) and np.array_equal(
        arrays.recall, ref.eval["recall"]
    )
    diffs = [abs(ours[k] - r) for k, r in zip(SUMMARY_NAMES, ref.stats)]
    ratio, ratio_median, ratio_cpu = ref_wall / best, ref_wall / median, ref_cpu / best_cpu
    load_after = os.getloadavg()
    print(f"speed-up {ratio:.1f}x wall (median {ratio_median:.1f}x), {ratio_cpu:.1f}x CPU; "
          f"max |difference| {max(diffs):.1e}; precision/recall arrays identical: {same_arrays}")

    lines = [
        "# Detection mAP benchmark: `coco_evaluate` vs pycocotools",
        "",
        f"Written by `python -m scripts.bench_detection{_flags(args)}`.",
        "",
        (
            f"Data: synthetic, seed {args.seed}: {len(gt['images'])} images × {len(gt['categories'])} classes, "
            f"{len(gt['annotations'])} objects, {len(dets)} detections (up to {args.max_dets} per image, "
            "scores rounded to 3 decimals)."
        ),
        (
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"NumPy {np.__version__}; load average {load_before[0]:.1f} before and {load_after[0]:.1f} after. "
            "The machine is shared, so wall times carry noise; CPU times (this process only) carry less."
        ),
        "",
        "| | wall s | CPU s |",
        "|---|---:|---:|",
        (
            f"| `coco_evaluate` (parse + evaluate + accumulate + summarize), best of {args.repeats} "
            f"| {best:.2f} | {best_cpu:.2f} |"
        ),
        f"| `coco_evaluate`, median of {args.repeats} | {median:.2f} | |",
        f"| pycocotools `evaluate()` | {t['evaluate']:.2f} | {t['evaluate_cpu']:.2f} |",
        f"| pycocotools `accumulate()` | {t['accumulate']:.2f} | {t['accumulate_cpu']:.2f} |",
        f"| pycocotools `summarize()` | {t['summarize']:.3f} | {t['summarize_cpu']:.3f} |",
        f"| pycocotools evaluate + accumulate + summarize | {ref_wall:.2f} | {ref_cpu:.2f} |",
        f"| (pycocotools index + `loadRes`, not counted) | {t['load']:.2f} | {t['load_cpu']:.2f} |",
        f"| `voc_evaluate` VOC07 11-point, best of {args.repeats} | {voc['voc07']:.2f} | |",
        f"| `voc_evaluate` VOC all-point, best of {args.repeats} | {voc['voc12']:.2f} | |",
        "",
        (
            f"**Speed-up: {ratio:.1f}× wall-clock** (pycocotools' three phases / our best; {ratio_median:.1f}× "
            f"against our median), **{ratio_cpu:.1f}× in CPU time**."
        ),
        "",
        (
            f"Same numbers: the largest difference among the 12 is {max(diffs):.1e}; pycocotools' precision "
            f"[T,R,K,A,M] and recall [T,K,A,M] arrays are {'bit-identical' if same_arrays else 'NOT identical'}."
        ),
        "",
        "| metric | ours | pycocotools |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {ours[k]:.6f} | {r:.6f} |" for k, r in zip(SUMMARY_NAMES, ref.stats)]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    if max(diffs) > 1e-9 or not same_arrays:
        sys.exit("the numbers differ from pycocotools")


if __name__ == "__main__":
    main()
