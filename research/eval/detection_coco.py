"""COCO bounding-box evaluation, vectorised, equal to pycocotools' ``COCOeval``.

The semantics are those of ``COCOeval.evaluate`` + ``accumulate`` + ``summarize``
with ``iouType='bbox'`` and the default parameters; the arrays are computed with
the same floating-point operations, so ``precision`` and ``recall`` are
bit-identical and the 12 summary numbers equal to the last bit or two.

Per (image, category), pycocotools

1. sorts detections by score, highest first, with a *stable* mergesort (ties keep
   the order in which the results list them) and keeps the first
   ``maxDets[-1] = 100``;
2. marks a ground truth "ignored" in an area range when it is a crowd or its
   ``area`` field lies outside ``[lo, hi]`` (both ends inclusive);
3. for each IoU threshold t and each detection in score order, matches it to the
   ground truth with the highest IoU >= t among those not yet matched (crowds may
   be matched any number of times), preferring any non-ignored ground truth over
   an ignored one; ties in IoU go to the later ground truth in annotation order;
4. ignores a detection matched to an ignored ground truth, and an unmatched
   detection whose own area ``w * h`` is outside the range.

Then per (category, area range, maxDets) it concatenates the first maxDets
detections of every image in image-id order, stable-sorts them by score, and
takes precision ``tp / (tp + fp + eps)`` and recall ``tp / npig`` (npig: the
non-ignored ground truths) along that order; the precision at each of the 101
recall thresholds r is the maximum precision at or after the first position
whose recall is >= r (``searchsorted(side='left')`` on the monotone envelope),
0 past the last recall reached, and -1 everywhere when the category has no
non-ignored ground truth. ``summarize`` averages the entries that are not -1.

How it is vectorised:

* matching is sequential in score order, so it steps over detection rank (at
  most 100 steps) and handles all (image, category) pairs, all 4 area ranges
  and all 10 thresholds at once. Only detections with IoU >= 0.5 with some
  ground truth of their group take part (the others can never match, and do not
  change the state); groups are bucketed by ground-truth count and sorted by
  candidate count, so each step works on a contiguous prefix of one bucket;
* accumulation flattens (threshold, category) into segments of one array: one
  cumsum gives every running TP/FP count, one searchsorted on the integer TP
  count finds every recall threshold, and one ``np.maximum.reduceat`` plus a
  cumulative max over the 101 points gives every envelope value.

One pycocotools quirk is kept on purpose: it records a match by the ground
truth's annotation id and tests it for truth, so a match to an annotation with
``id == 0`` counts as no match (a false positive). Give annotations ids from 1,
as COCO does.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from research.eval.box_iou import coco_iou
from research.eval.detection_data import Detections, GroundTruth

# The defaults of pycocotools' Params.setDetParams, built the same way.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
AREA_LABELS = ("all", "small", "medium", "large")

# (name, is AP, IoU threshold or None for the mean over all, area label, maxDets)
SUMMARY = (
    ("AP", True, None, "all", 100),
    ("AP50", True, 0.5, "all", 100),
    ("AP75", True, 0.75, "all", 100),
    ("APs", True, None, "small", 100),
    ("APm", True, None, "medium", 100),
    ("APl", True, None, "large", 100),
    ("AR1", False, None, "all", 1),
    ("AR10", False, None, "all", 10),
    ("AR100", False, None, "all", 100),
    ("ARs", False, None, "small", 100),
    ("ARm", False, None, "medium", 100),
    ("ARl", False, None, "large", 100),
)

_EPS = np.spacing(1)


@dataclasses.dataclass(frozen=True)
class CocoEvalArrays:
    """pycocotools' ``COCOeval.eval`` arrays (-1 where undefined)."""

    precision: np.ndarray  # [T, R, K, A, M]
    recall: np.ndarray  # [T, K, A, M]
    category_ids: tuple


def evaluate(gt: GroundTruth, dt: Detections) -> CocoEvalArrays:
    """Per-detection matching, then accumulation into precision/recall arrays."""
    n_img, max_det = gt.num_images, MAX_DETS[-1]

    # Detections sorted by (category, image, -score), ties in input order; keep the top 100 per group.
    key = dt.category * n_img + dt.image
    order = np.lexsort((-dt.score, key))
    key = key[order]
    rank = _rank_in_run(key)
    keep = rank < max_det
    order, key, rank = order[keep], key[keep], rank[keep]
    d_cat = dt.category[order]
    d_box = dt.box[order]
    d_score = dt.score[order]
    d_area = d_box[:, 2] * d_box[:, 3]

    tp, fp = _match(gt, key, d_box, d_area)
    npig = _count_non_ignored(gt)
    precision, recall = _accumulate(tp, fp, d_cat, d_score, rank, npig)
    return CocoEvalArrays(precision=precision, recall=recall, category_ids=gt.category_ids)


def summarize(arrays: CocoEvalArrays) -> dict:
    """The 12 numbers of ``COCOeval.summarize``, under their usual short names."""
    out = {}
    for name, is_ap, iou, area, max_dets in SUMMARY:
        s = arrays.precision if is_ap else arrays.recall
        if iou is not None:
            s = s[np.where(iou == IOU_THRESHOLDS)[0]]
        s = s[..., AREA_LABELS.index(area), MAX_DETS.index(max_dets)]
        valid = s[s > -1]
        out[name] = float(np.mean(valid)) if valid.size else -1.0
    return out


def per_class_ap(arrays: CocoEvalArrays) -> dict:
    """AP@[.50:.95] (area all, maxDets 100) per category id; -1 for a category with no ground truth."""
    s = arrays.precision[:, :, :, 0, -1]
    out = {}
    for k, cat in enumerate(arrays.category_ids):
        v = s[:, :, k]
        v = v[v > -1]
        out[cat] = float(np.mean(v)) if v.size else -1.0
    return out


# --------------------------------------------------------------------------- internals


def _rank_in_run(sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal keys."""
    n = sorted_keys.size
    start = np.ones(n, dtype=bool)
    start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    starts = np.flatnonzero(start)
    return np.arange(n) - starts[np.cumsum(start) - 1]


def _ignored(gt: GroundTruth) -> np.ndarray:
    """[N, A] ground-truth ignore flag per area range: crowd, or area outside [lo, hi]."""
    lo, hi = AREA_RANGES[:, 0], AREA_RANGES[:, 1]
    area = gt.area[:, None]
    return gt.iscrowd[:, None] | (area < lo) | (area > hi)


def _count_non_ignored(gt: GroundTruth) -> np.ndarray:
    """[K, A] number of non-ignored ground truths per category and area range."""
    keep = ~_ignored(gt)
    return np.stack(
        [np.bincount(gt.category, weights=keep[:, a], minlength=gt.num_categories) for a in range(keep.shape[1])],
        axis=1,
    ).astype(np.int64)


def _bucket_width(g: np.ndarray) -> np.ndarray:
    """Padded ground-truth count of a group: exact up to 4, then the next power of two."""
    return np.where(g <= 4, g, 2 ** np.ceil(np.log2(np.maximum(g, 1))).astype(np.int64))


def _enumerate(counts: np.ndarray):
    """For consecutive runs of the given lengths: each element's run, and its index within the run."""
    run = np.repeat(np.arange(counts.size), counts)
    return run, np.arange(run.size) - np.repeat(np.cumsum(counts) - counts, counts)


def _match(gt: GroundTruth, d_key: np.ndarray, d_box: np.ndarray, d_area: np.ndarray):
    """Greedy matching of the kept detections (sorted by group, then rank); tp, fp as [A, T, N] bool."""
    n_det = d_key.size
    A, T = AREA_RANGES.shape[0], IOU_THRESHOLDS.size
    found = np.zeros((n_det, A, T), dtype=bool)  # matched to some ground truth
    found_ign = np.zeros((n_det, A, T), dtype=bool)  # ... to an ignored one
    found_zero = np.zeros((n_det, A, T), dtype=bool)  # ... to one whose annotation id is 0

    g_order = np.argsort(gt.category * gt.num_images + gt.image, kind="stable")  # annotation order in a group
    d_keys, d_start, d_count = np.unique(d_key, return_index=True, return_counts=True)
    g_keys, g_start, g_count = np.unique(
        (gt.category * gt.num_images + gt.image)[g_order], return_index=True, return_counts=True
    )
    # Groups (image, category) with both: detections d_first + [0, D), ground truths g_order[g_first + [0, G)].
    _, di, gi = np.intersect1d(d_keys, g_keys, assume_unique=True, return_indices=True)
    d_first, D = d_start[di], d_count[di]
    g_first, G = g_start[gi], g_count[gi]

    # Every (detection, ground truth) pair within those groups.
    p_group, p_local = _enumerate(D * G)
    p_det = d_first[p_group] + p_local // G[p_group]
    p_gl = p_local % G[p_group]  # the ground truth's position in its group
    p_gt = g_order[g_first[p_group] + p_gl]
    iou = coco_iou(d_box[p_det], gt.box[p_gt], gt.iscrowd[p_gt])

    # Only a detection with IoU >= the lowest threshold against some ground truth can ever match;
    # the others leave every ground truth as it was.
    cand = np.unique(p_det[iou >= IOU_THRESHOLDS[0]])  # in (group, rank) order
    c_group = np.searchsorted(d_first, cand, side="right") - 1
    c_step = _rank_in_run(c_group)  # rank among its group's candidates
    c_count = np.bincount(c_group, minlength=di.size)
    width = _bucket_width(G)
    ign_all = _ignored(gt)
    for w in np.unique(width[c_count > 0]).tolist():
        groups = np.flatnonzero((width == w) & (c_count > 0))
        groups = groups[np.argsort(-c_count[groups], kind="stable")]  # most candidates first
        slot = np.full(di.size, -1, dtype=np.int64)
        slot[groups] = np.arange(groups.size)
        # Rows are step-major: at step s the rows of the groups still active are one contiguous block.
        n_active = np.cumsum(np.bincount(c_count[groups] - 1)[::-1])[::-1]
        step_offset = np.concatenate([[0], np.cumsum(n_active)])
        mine = slot[c_group] >= 0
        rows = step_offset[c_step[mine]] + slot[c_group[mine]]
        row_of_det = np.full(n_det, -1, dtype=np.int64)
        row_of_det[cand[mine]] = rows
        det_of_row = np.empty(rows.size, dtype=np.int64)
        det_of_row[rows] = cand[mine]

        # Ground truths are laid out right to left (column w-1-j for the j-th of a group), so that
        # argmax, which keeps the first of equal maxima, picks the later one as pycocotools does.
        iou_rows = np.full((rows.size, w), -1.0)
        p_row = row_of_det[p_det]
        sel = p_row >= 0
        iou_rows[p_row[sel], w - 1 - p_gl[sel]] = iou[sel]
        gg, gj = _enumerate(G[groups])
        g_idx = g_order[g_first[groups][gg] + gj]
        crowd = np.zeros((groups.size, w), dtype=bool)
        crowd[gg, w - 1 - gj] = gt.iscrowd[g_idx]
        ign = np.ones((groups.size, A, w), dtype=bool)
        ign[gg, :, w - 1 - gj] = ign_all[g_idx]
        id_zero = np.zeros((groups.size, w), dtype=bool)
        id_zero[gg, w - 1 - gj] = gt.id_is_zero[g_idx]

        hit, hit_ign, hit_zero = _greedy_match(iou_rows, n_active, crowd, ign, id_zero)
        found[det_of_row], found_ign[det_of_row], found_zero[det_of_row] = hit, hit_ign, hit_zero

    matched = found & ~found_zero  # pycocotools' dtMatches != 0
    lo, hi = AREA_RANGES[:, 0], AREA_RANGES[:, 1]
    out_of_range = ((d_area[:, None] < lo) | (d_area[:, None] > hi))[:, :, None]
    ignore = (found & found_ign) | (~matched & out_of_range)
    # [A, T, N], so that accumulation slices contiguous rows.
    tp, fp = matched & ~ignore, ~matched & ~ignore
    return np.ascontiguousarray(tp.transpose(1, 2, 0)), np.ascontiguousarray(fp.transpose(1, 2, 0))


def _greedy_match(iou_rows, n_active, crowd, ign, id_zero):
    """pycocotools' evaluateImg loop for a bucket of groups, all area ranges and thresholds at once.

    Group i's detection of candidate rank s is row ``sum(n_active[:s]) + i`` of `iou_rows` [rows, w]
    (IoU with the group's ground truths, -1 for padding); groups are ordered so that those with
    a rank-s candidate are the first n_active[s]. `crowd`, `id_zero` [groups, w] and `ign`
    [groups, A, w] describe the ground truths. Returns, per row, [rows, A, T] flags: matched; to
    an ignored ground truth; to one with annotation id 0.
    """
    n_rows, n_groups = iou_rows.shape[0], crowd.shape[0]
    A, T, w = ign.shape[1], IOU_THRESHOLDS.size, crowd.shape[1]
    hit = np.zeros((n_rows, A, T), dtype=bool)
    hit_ign = np.zeros((n_rows, A, T), dtype=bool)
    hit_zero = np.zeros((n_rows, A, T), dtype=bool)
    not_ign = ~ign[:, :, None, :]  # [groups, A, 1, w]
    taken = np.zeros((n_groups, A, T, w), dtype=bool)  # a non-crowd ground truth already matched
    thr = IOU_THRESHOLDS[:, None]
    row = 0
    for n in n_active.tolist():
        r = iou_rows[row:row + n]  # [n, w]
        eligible = (r[:, None, :] >= thr)[:, None] & ~taken[:n]  # [n, A, T, w]
        preferred = eligible & not_ign[:n]  # a non-ignored ground truth beats any ignored one
        has_pref = preferred.any(-1)
        choice = np.where(has_pref[..., None], preferred, eligible)
        best = np.argmax(np.where(choice, r[:, None, None, :], -1.0), axis=-1)  # [n, A, T]
        i, a, t = np.nonzero(has_pref | eligible.any(-1))
        col = best[i, a, t]
        taken[i, a, t, col] = ~crowd[i, col]  # crowds can be matched again
        hit[row + i, a, t] = True
        hit_ign[row + i, a, t] = ign[i, a, col]
        hit_zero[row + i, a, t] = id_zero[i, col]
        row += n
    return hit, hit_ign, hit_zero


def _accumulate(tp, fp, d_cat, d_score, rank, npig):
    """pycocotools' accumulate: precision [T, R, K, A, M] and recall [T, K, A, M].

    Along a segment precision only rises at a TP, so the envelope at a position is the maximum
    over the TPs from there on; and the position where recall first reaches r is the need-th TP,
    where need is the smallest count with need / npig >= r (0 past the last TP, as in
    pycocotools). So only the TPs are visited, in one array over all (IoU, category) segments.
    """
    T, R, K = IOU_THRESHOLDS.size, RECALL_THRESHOLDS.size, npig.shape[0]
    A, M = AREA_RANGES.shape[0], len(MAX_DETS)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))

    # Per category: all images' detections, stable-sorted by score (ties: image order, then rank).
    acc_order = np.lexsort((-d_score, d_cat))
    # need[k, a, r]: the smallest TP count j with float(j) / npig >= r; at least 1 (at r = 0 the
    # first position has precision 0 unless it is the first TP).
    safe_npig = np.maximum(npig, 1)[:, :, None]  # [K, A, 1]
    r = RECALL_THRESHOLDS
    need = np.maximum(np.ceil(r * safe_npig).astype(np.int64) - 2, 1)
    for _ in range(5):
        need = need + (need / safe_npig < r)

    for m, max_det in enumerate(MAX_DETS):
        sel = acc_order[rank[acc_order] < max_det]
        n = sel.size
        cat = d_cat[sel]
        seg_lo = np.searchsorted(cat, np.arange(K), side="left")
        seg_hi = np.searchsorted(cat, np.arange(K), side="right")
        start = (np.arange(T)[:, None] * n + seg_lo).ravel()  # flat bounds of segments (t, k)
        end = (np.arange(T)[:, None] * n + seg_hi).ravel()
        for a in range(A):
            tp_pos = np.flatnonzero(tp[a][:, sel])  # TPs in the flat [T * n] order
            cfp = np.concatenate([[0], np.cumsum(fp[a][:, sel], dtype=np.int64)])
            tp_lo = np.searchsorted(tp_pos, start)  # [T * K] index of each segment's first TP
            tp_count = np.searchsorted(tp_pos, end) - tp_lo
            seg_of_tp = np.repeat(np.arange(T * K), tp_count)
            tp_run = (np.arange(tp_pos.size) - tp_lo[seg_of_tp] + 1).astype(np.float64)
            fp_run = (cfp[tp_pos + 1] - cfp[start][seg_of_tp]).astype(np.float64)
            pr = tp_run / (fp_run + tp_run + _EPS)

            # Envelope at the need-th TP: max of pr over [first, next first) blocks, then a running max.
            tp_lo, tp_count = tp_lo.reshape(T, K, 1), tp_count.reshape(T, K, 1)
            need_a = need[None, :, a, :]  # [1, K, R]
            reached = need_a <= tp_count
            first = np.where(reached, tp_lo + need_a - 1, tp_lo + tp_count)
            bounds = np.concatenate([first, tp_lo + tp_count], axis=2).ravel()
            blocks = np.maximum.reduceat(np.append(pr, 0.0), bounds).reshape(T, K, R + 1)[:, :, :R]
            blocks = np.where(reached, blocks, 0.0)
            q = np.maximum.accumulate(blocks[:, :, ::-1], axis=2)[:, :, ::-1]

            has_gt = npig[:, a] > 0  # [K]
            rc = np.where(seg_hi > seg_lo, tp_count[:, :, 0] / np.maximum(npig[:, a], 1), 0.0)
            precision[:, :, :, a, m] = np.where(has_gt[None, :, None], q, -1.0).transpose(0, 2, 1)
            recall[:, :, a, m] = np.where(has_gt, rc, -1.0)
    return precision, recall
