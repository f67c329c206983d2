"""Exact, fast anomaly-detection metrics (docs/metrics.md).

Image and pixel AUROC / AP (as sklearn's `roc_auc_score` / `average_precision_score`, ties included), F1-max
over every threshold of the precision-recall curve, and AUPRO as the official MVTec AD evaluation defines
it: regions are the 8-connected components of each ground-truth mask, FPR runs over all normal pixels of
the class, PRO is the mean overlap over regions, the curve is integrated up to `fpr_limit` (linear
interpolation at the limit) and divided by it. `pro_compat=True` adds the 200-threshold AUPRO that
AnomalyCLIP-family papers report (thresholds evenly spaced between the class's min and max score, strict
`>`, FPR kept below the limit and min-max rescaled, as their code does).

How it is fast: a normal pixel is kept as the 32 order-preserving bits of its float32 score, in the array
each batch produced (4 bytes a pixel; no float maps are kept); an anomalous pixel as a 64-bit
key, its score bits above its region id. Per class, the normal pixels are sorted in place on every core
(one part per core, sorted in threads and never merged: counts below a
score add up over parts) and the few anomalous keys on one. Everything
after that works on the anomalous pixels and on the distinct scores they hold, because every curve changes
slope only there: between two such scores TP and PRO are flat, so AUROC (Mann-Whitney with ties), AP and
F1-max only need those groups and the count of normal pixels below and at each (binary searches), and the
(FPR, PRO) curve is flat between them. No per-threshold loop, no sklearn, no second copy of the pixels.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from crossgraft.errors import CrossgraftError

BITS_CHUNK = 1 << 16  # scores converted to ordered bits per step (the temporaries stay in cache)
PARALLEL_SORT_MIN = 1 << 20
TORCH_SORT_MIN = 1 << 16  # smaller parts: numpy's sort (no tensor round trip)
SIGN_BIT_INT = -(2**31)  # below this, one thread sorts faster than partition + threads
REGION_BITS = 32
REGION_MASK = np.uint64((1 << REGION_BITS) - 1)
SIGN_BIT = np.int32(-(2**31))
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
COMPAT_STEPS = 200
MAX_CURVE_POINTS = 4096  # vertices kept per drawn curve (a class of a real dataset has millions)
LITTLE_ENDIAN = sys.byteorder == "little"


@dataclass
class AnomalyMetrics:
    """Metrics of one class (or their mean). None: not applicable (e.g. a class with only one label)."""

    image_auroc: float | None
    image_ap: float | None
    image_f1max: float | None
    pixel_auroc: float | None
    pixel_ap: float | None
    pixel_f1max: float | None
    aupro: float | None
    aupro_compat: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


@dataclass
class Curve:
    """A curve exactly as its metric integrates it: a polyline with non-decreasing x (vertical steps appear as two
    vertices at one x). The trapezoid area up to `x_limit`, divided by it, is `value` (see `curve_area`); curves
    of more than MAX_CURVE_POINTS vertices are thinned for drawing, `value` stays the exact metric."""

    x: np.ndarray  # (V,)
    y: np.ndarray  # (V,)
    metric: str  # "AUROC", "AP" or "AUPRO"
    value: float  # the reported metric
    x_limit: float = 1.0  # AUPRO integrates up to the FPR limit


@dataclass
class CurveMetrics:
    auroc: float | None
    ap: float | None
    f1max: float | None
    aupro: float | None = None
    aupro_compat: float | None = None
    roc: Curve | None = None
    pr: Curve | None = None
    pro: Curve | None = None
    f1_threshold: float | None = None  # the lowest score counted anomalous at the F1-max point


@dataclass
class ClassCurves:
    """The curves behind one class's metrics, and the image threshold at its F1-max point (score >= threshold:
    anomalous). None where the class has only one label."""

    image_roc: Curve | None = None
    image_pr: Curve | None = None
    pixel_roc: Curve | None = None
    pixel_pr: Curve | None = None
    pro: Curve | None = None
    image_threshold: float | None = None


@dataclass
class ClassEvaluation:
    metrics: AnomalyMetrics
    curves: ClassCurves


class MetricsInputError(CrossgraftError, ValueError):
    """Scores or masks that cannot be evaluated (NaN/inf scores, non-binary masks, mismatched shapes)."""


# ------------------------------------------------------------------------------------------ key packing
def _ordered_bits32(scores: np.ndarray) -> np.ndarray:
    """uint32 whose unsigned order is the float32 order; -0.0 is made +0.0 first so that the two tie.

    Negative scores get all their bits flipped, the others their sign bit set. Computed in place, chunk by
    chunk, so that the temporaries stay in cache (four full-size temporaries cost ten times as much), with large
    inputs split over the cores."""
    scores = np.asarray(scores, dtype=np.float32)
    flat = scores.reshape(-1)
    out = np.empty(flat.size, np.uint32)
    workers = cpu_workers() if flat.size >= PARALLEL_SORT_MIN else 1
    bounds = [flat.size * part // workers for part in range(workers + 1)]
    if workers == 1:
        _ordered_bits_into(flat, out.view(np.int32))
    else:
        with ThreadPoolExecutor(workers) as pool:
            ranges = [slice(bounds[i], bounds[i + 1]) for i in range(workers)]
            list(pool.map(lambda part: _ordered_bits_into(flat[part], out.view(np.int32)[part]), ranges))
    return out.reshape(scores.shape)


def _ordered_bits_into(scores: np.ndarray, ints: np.ndarray) -> None:
    flags = np.empty(min(BITS_CHUNK, scores.size), np.int32)
    for start in range(0, scores.size, BITS_CHUNK):
        part = ints[start : start + BITS_CHUNK]
        sign = flags[: part.size]
        np.add(scores[start : start + BITS_CHUNK], np.float32(0.0), out=part.view(np.float32))  # -0.0 → +0.0
        np.right_shift(part, 31, out=sign)  # -1 for negative scores, 0 otherwise
        np.bitwise_or(sign, SIGN_BIT, out=sign)
        np.bitwise_xor(part, sign, out=part)


def cpu_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ordered_bits(scores: np.ndarray) -> np.ndarray:
    """The ordered score bits as uint64 (the high half of a key)."""
    return _ordered_bits32(scores).astype(np.uint64)


def _check_finite(scores: np.ndarray, what: str) -> None:
    if scores.size and np.isfinite(scores.min()) and np.isfinite(scores.max()):  # NaN propagates into min and max
        return
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise MetricsInputError(f"{what} contain {bad} NaN or infinite value(s); cannot rank them")


def _binary_mask(masks: np.ndarray, binarize: bool) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return masks
    if binarize:
        return masks != 0
    values = np.unique(masks)
    if not np.isin(values, (0, 1)).all():
        shown = values[:6].tolist()
        raise MetricsInputError(
            f"masks must be binary (0/1 or bool), found values {shown}; pass binarize=True to use mask != 0"
        )
    return masks.astype(bool)


# ----------------------------------------------------------------------------------------- accumulator
class PixelAccumulator:
    """Collects one class's anomaly maps batch by batch: the ordered score bits of each normal pixel (uint32, 4
    bytes) and a key (score bits above region id, uint64) for each anomalous one; no float maps are kept, and
    each batch's arrays are kept as they were made (no buffer to copy them into, no concatenation later)."""

    def __init__(self, *, binarize: bool = False) -> None:
        self.binarize = binarize
        self._negatives: list[np.ndarray] = []
        self._positives: list[np.ndarray] = []
        self._region_sizes: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]  # region 0: normal pixels
        self.num_regions = 0
        self.num_positive = 0
        self.num_negative = 0
        self.min_score = np.float32(np.inf)
        self.max_score = np.float32(-np.inf)

    @property
    def nbytes(self) -> int:
        """Bytes the accumulated pixels hold (for tests and benchmarks)."""
        return sum(block.nbytes for block in (*self._negatives, *self._positives))

    def _store_negatives(self, bits: np.ndarray) -> None:
        self._negatives.append(bits)
        self.num_negative += bits.size

    def add(self, scores: np.ndarray, masks: np.ndarray) -> None:
        """Add maps (B, H, W) or (H, W) with their ground-truth masks of the same shape."""
        scores = np.asarray(scores, dtype=np.float32)
        masks = _binary_mask(masks, self.binarize)
        if scores.shape != masks.shape:
            raise MetricsInputError(f"anomaly maps {scores.shape} and masks {masks.shape} differ in shape")
        if scores.ndim == 2:
            scores, masks = scores[None], masks[None]
        if scores.ndim != 3:
            raise MetricsInputError(f"anomaly maps must be (N, H, W) or (H, W), got {scores.shape}")
        _check_finite(scores, "anomaly maps")
        if scores.size == 0:
            return
        bits = _ordered_bits32(scores)  # (B, H, W)
        anomalous = [index for index in range(scores.shape[0]) if masks[index].any()]
        if not anomalous:
            self._store_negatives(bits.ravel())
        else:
            self._store_negatives(bits[~masks])
            for index in anomalous:
                labels, count = ndimage.label(masks[index], structure=EIGHT_CONNECTED)
                if self.num_regions + count >= 1 << REGION_BITS:
                    raise MetricsInputError("more than 2^32 ground-truth regions in one class")
                inside = masks[index]
                regions = labels[inside].astype(np.uint32) + np.uint32(self.num_regions)
                keys = np.empty(regions.size, np.uint64)
                _pack_keys(keys, bits[index][inside], regions)
                self._positives.append(keys)
                self._region_sizes.append(np.bincount(labels.ravel())[1:].astype(np.int64))
                self.num_regions += count
                self.num_positive += regions.size
        self.min_score = min(self.min_score, scores.min())
        self.max_score = max(self.max_score, scores.max())

    def compute(self, *, fpr_limit: float = 0.3, pro_compat: bool = False, curves: bool = True) -> CurveMetrics:
        """Pixel AUROC, AP, F1-max and AUPRO (and their curves); None where the class has only one pixel label.
        Consumes the pixels."""
        negatives = self._negatives
        positives = np.concatenate(self._positives) if self._positives else np.zeros(0, np.uint64)
        self._negatives, self._positives = [], []
        if self.num_positive == 0 or self.num_negative == 0:
            return CurveMetrics(None, None, None, None, None)
        parts = sorted_parts(negatives)
        positives.sort()
        sizes = np.concatenate(self._region_sizes).astype(np.float64)
        weights = np.zeros_like(sizes)
        weights[1:] = 1.0 / (self.num_regions * sizes[1:])  # a region's pixels add up to 1/R of PRO
        compat = _compat_thresholds(self.min_score, self.max_score) if pro_compat else None
        return _metrics_from_sorted(parts, positives, weights, fpr_limit, compat, curves)


def sorted_parts(blocks: list[np.ndarray], workers: int | None = None) -> list[np.ndarray]:
    """Sort the blocks in place, at once in threads (numpy's sort releases the GIL); a block much larger than its
    share is split first. The parts are never merged: what the metrics need of the normal pixels are counts below
    a score, and counts add up over parts (`_count_below`)."""
    workers = workers or cpu_workers()
    total = sum(block.size for block in blocks)
    if workers < 2 or total < PARALLEL_SORT_MIN:
        parts = blocks
    else:
        share = -(-total // workers)  # ceil
        parts = [block[start : start + share] for block in blocks for start in range(0, max(block.size, 1), share)]
    parts = [part for part in parts if part.size]
    if len(parts) < 2 or workers < 2:
        for part in parts:
            _sort_bits(part)
        return parts
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(_sort_bits, sorted(parts, key=len, reverse=True)))  # largest first: balanced
    return parts


def _sort_bits(part: np.ndarray) -> None:
    """Sort uint32 score bits in place. Large parts go through torch's radix sort (stable sort of int32), which is
    about 1.5x numpy's sort on this data; the bits are viewed as int32 with the sign bit flipped, which keeps
    their order."""
    if part.size < TORCH_SORT_MIN:
        part.sort()
        return
    values = torch.from_numpy(part.view(np.int32))  # shares the memory
    values.bitwise_xor_(SIGN_BIT_INT)
    ordered = torch.sort(values, stable=True).values
    ordered.bitwise_xor_(SIGN_BIT_INT)
    values.copy_(ordered)


def _count_below(parts: list[np.ndarray], bits: np.ndarray, side: str = "left") -> np.ndarray:
    """How many normal pixels have score bits below `bits` (side='left') or at most `bits` (side='right')."""
    return sum(np.searchsorted(part, bits, side=side) for part in parts)  # type: ignore[call-overload,return-value]


def _pack_keys(out: np.ndarray, score_bits: np.ndarray, regions: np.ndarray) -> None:
    """out (uint64) = score_bits << 32 | regions, written as two uint32 halves where the machine allows."""
    if LITTLE_ENDIAN and out.flags.c_contiguous:
        halves = out.view(np.uint32)
        halves[..., 1::2] = score_bits
        halves[..., 0::2] = regions
    else:
        out[...] = (score_bits.astype(np.uint64) << np.uint64(REGION_BITS)) | regions


class ImageAccumulator:
    """Image scores and labels of one class."""

    def __init__(self) -> None:
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float32).ravel()
        labels = np.asarray(labels).ravel()
        if scores.shape != labels.shape:
            raise MetricsInputError(f"{scores.size} image scores but {labels.size} image labels")
        _check_finite(scores, "image scores")
        if not np.isin(labels, (0, 1)).all():
            raise MetricsInputError(f"image labels must be 0 or 1, found {np.unique(labels)[:6].tolist()}")
        self.scores.append(scores)
        self.labels.append(labels.astype(np.int64))

    def compute(self, curves: bool = True) -> CurveMetrics:
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32)
        labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)
        if labels.sum() in (0, labels.size):
            return CurveMetrics(None, None, None)
        bits = _ordered_bits32(scores)
        anomalous = labels == 1
        negatives = np.sort(bits[~anomalous])
        positives = np.empty(int(anomalous.sum()), dtype=np.uint64)
        _pack_keys(positives, bits[anomalous], np.ones(positives.size, np.uint32))  # "region" 1: anomalous image
        positives.sort()
        return _metrics_from_sorted([negatives], positives, np.array([0.0, 0.0]), None, None, curves)


# ------------------------------------------------------------------------------------- curve metrics
def _compat_thresholds(min_score: np.float32, max_score: np.float32) -> np.ndarray:
    # Same arithmetic as the AnomalyCLIP code: float32 step, np.arange of float32 scalars (a float64 array).
    min_score, max_score = np.float32(min_score), np.float32(max_score)
    delta = (max_score - min_score) / COMPAT_STEPS
    if delta == 0:
        return np.zeros(0)
    return np.arange(min_score, max_score, delta)


def _metrics_from_sorted(
    negatives: list[np.ndarray],
    positive_keys: np.ndarray,
    weights: np.ndarray,
    fpr_limit: float | None,
    compat: np.ndarray | None,
    curves: bool = True,
) -> CurveMetrics:
    """All metrics (and, with `curves`, the curves they integrate, thinned for drawing) from the score bits of the
    normal pixels (uint32, in separately sorted parts) and the ascending keys of the anomalous ones. Work beyond
    the sorts is proportional to the anomalous pixels (binary searches into the normal ones)."""
    num_positive = positive_keys.size
    num_negative = sum(part.size for part in negatives)
    positive_bits = (positive_keys >> np.uint64(REGION_BITS)).astype(np.uint32)
    pro_weights = weights[(positive_keys & REGION_MASK).astype(np.intp)]

    # groups: distinct scores that hold at least one anomalous pixel, ascending
    first = np.flatnonzero(np.concatenate(([True], positive_bits[1:] != positive_bits[:-1])))
    group_bits = positive_bits[first]
    tp_in_group = np.diff(np.append(first, num_positive)).astype(np.float64)
    negatives_below = _count_below(negatives, group_bits).astype(np.float64)
    fp_in_group = _count_below(negatives, group_bits, side="right") - negatives_below
    positives_below = first.astype(np.float64)
    tp_at = num_positive - positives_below  # score >= group score
    fp_at = num_negative - negatives_below

    # AUROC: Mann-Whitney with ties counted half; AP and F1-max at each threshold where TP changes
    auroc = float(np.sum(tp_in_group * (negatives_below + 0.5 * fp_in_group))) / (num_positive * num_negative)
    precision = tp_at / (tp_at + fp_at)
    ap = float(np.sum(tp_in_group * precision)) / num_positive
    f1 = 2 * tp_at / (tp_at + fp_at + num_positive)
    best = int(np.argmax(f1))
    result = CurveMetrics(
        auroc=auroc, ap=ap, f1max=float(f1[best]), f1_threshold=score_of_bits(np.uint64(group_bits[best]))
    )

    # the curves these sums integrate, vertex by vertex from the highest score down: within a group of tied
    # scores TP and FP grow together (a diagonal), between groups only FP grows (a horizontal step)
    if curves:
        fpr_end, tpr_end = fp_at[::-1] / num_negative, tp_at[::-1] / num_positive
        fpr_start = (fp_at - fp_in_group)[::-1] / num_negative
        tpr_start = (tp_at - tp_in_group)[::-1] / num_positive
        result.roc = _curve(
            np.concatenate(([0.0], _interleave(fpr_start, fpr_end), [1.0])),
            np.concatenate(([0.0], _interleave(tpr_start, tpr_end), [1.0])),
            "AUROC",
            auroc,
        )
        result.pr = _curve(_interleave(tpr_start, tpr_end), _interleave(precision[::-1], precision[::-1]), "AP", ap)

    if fpr_limit is not None or compat is not None:
        cum_weights = np.concatenate(([0.0], np.cumsum(pro_weights)))  # weight of positives below index
        pro_at = np.minimum(cum_weights[-1] - cum_weights[first], 1.0)  # PRO at score >= group score
    if fpr_limit is not None:
        xs, ys = _pro_curve(fp_at, fp_in_group, pro_at, num_negative)
        result.aupro = _area_up_to(xs, ys, fpr_limit) / fpr_limit
        if curves:
            result.pro = _curve(xs, ys, "AUPRO", result.aupro, fpr_limit)
    if compat is not None:
        # pixels strictly above a float64 threshold = float32 scores >= the next float32 above it
        bounds = compat.astype(np.float32)
        bounds = np.where(bounds.astype(np.float64) <= compat, np.nextafter(bounds, np.float32(np.inf)), bounds)
        bound_bits = _ordered_bits32(bounds)
        bound_keys = bound_bits.astype(np.uint64) << np.uint64(REGION_BITS)
        positives_not_above = np.searchsorted(positive_keys, bound_keys, side="left")
        fp_above = num_negative - _count_below(negatives, bound_bits)
        pro_above = np.minimum(cum_weights[-1] - cum_weights[positives_not_above], 1.0)
        result.aupro_compat = _compat_aupro(fp_above / num_negative, pro_above, fpr_limit or 0.3)
    return result


def _pro_curve(
    fp_at: np.ndarray, fp_in_group: np.ndarray, pro_at: np.ndarray, num_negative: int
) -> tuple[np.ndarray, np.ndarray]:
    """The MVTec (FPR, PRO) curve from (0, 0), descending thresholds; AUPRO integrates it up to the limit.

    Between two groups with anomalous pixels PRO is flat, so the curve's vertices are, per group: the
    point before it (FPR of the scores above it, PRO of the previous group) and its end point; then the
    lowest score's point (1, PRO) and the official closing point (1, 1).
    """
    fpr_end = np.minimum(fp_at[::-1] / num_negative, 1.0)
    fpr_start = np.minimum((fp_at - fp_in_group)[::-1] / num_negative, 1.0)
    pro_end = pro_at[::-1]
    pro_start = np.concatenate(([0.0], pro_end[:-1]))
    xs = np.concatenate(([0.0], _interleave(fpr_start, fpr_end), [1.0, 1.0]))
    ys = np.concatenate(([0.0], _interleave(pro_start, pro_end), [pro_end[-1], 1.0]))
    return xs, ys


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a0, b0, a1, b1, ..."""
    return np.column_stack([a, b]).ravel()


def score_of_bits(bits: np.uint64) -> float:
    """The float32 score whose ordered bits (see `_ordered_bits32`) are `bits`."""
    ordered = np.array([bits], dtype=np.uint64).astype(np.uint32)
    raw = np.where(ordered & np.uint32(0x80000000), ordered ^ np.uint32(0x80000000), ~ordered)
    return float(raw.view(np.float32)[0])


def _curve(xs: np.ndarray, ys: np.ndarray, metric: str, value: float, x_limit: float = 1.0) -> Curve:
    xs, ys = thin_polyline(xs, ys, MAX_CURVE_POINTS)
    return Curve(xs, ys, metric, value, x_limit)


def thin_polyline(xs: np.ndarray, ys: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most about `max_points` vertices of a polyline, spread evenly along its L1 length (first and last
    kept). Its area then differs by at most length^2 / (4 max_points) -- far less on real curves."""
    if xs.size <= max_points:
        return xs, ys
    length = np.concatenate(([0.0], np.cumsum(np.abs(np.diff(xs)) + np.abs(np.diff(ys)))))
    bucket = np.floor(length / (length[-1] / max_points))
    keep = np.concatenate(([True], bucket[1:] != bucket[:-1]))
    keep[-1] = True
    return xs[keep], ys[keep]


def curve_area(curve: Curve) -> float:
    """The metric a curve gives: trapezoid area up to its x limit, divided by the limit."""
    return _area_up_to(curve.x, curve.y, curve.x_limit) / curve.x_limit


def mean_curve(curves: list[Curve]) -> Curve:
    """The vertical average of curves (e.g. over classes), exact: its area is the mean of their areas.

    On the union of their x vertices each curve is linear between neighbours, so averaging its values from the
    left and from the right of every vertex (they differ at vertical steps) gives the averaged polyline."""
    grid = np.unique(np.concatenate([c.x for c in curves]))
    lefts, rights = zip(*(_values_at(c.x, c.y, grid) for c in curves))
    xs = np.repeat(grid, 2)
    ys = _interleave(np.mean(lefts, axis=0), np.mean(rights, axis=0))
    first = curves[0]
    return Curve(xs, ys, first.metric, float(np.mean([c.value for c in curves])), first.x_limit)


def _values_at(xs: np.ndarray, ys: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A polyline's value approaching each grid point from the left and from the right (grid within its x range)."""
    after = np.clip(np.searchsorted(xs, grid, side="left"), 0, xs.size - 1)  # first vertex at x >= g
    last = np.clip(np.searchsorted(xs, grid, side="right") - 1, 0, xs.size - 1)  # last vertex at x <= g
    before = np.clip(after - 1, 0, xs.size - 1)
    span = xs[after] - xs[before]
    t = np.divide(grid - xs[before], span, out=np.zeros_like(grid, dtype=np.float64), where=span > 0)
    between = ys[before] + t * (ys[after] - ys[before])
    on_vertex = xs[after] == grid
    return np.where(on_vertex, ys[after], between), np.where(on_vertex, ys[last], between)


def _area_up_to(xs: np.ndarray, ys: np.ndarray, limit: float) -> float:
    """Trapezoid area of a polyline with non-decreasing x from xs[0] to `limit`, interpolating at the limit."""
    xs, ys = clip_polyline(xs, ys, limit)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) * 0.5))


def clip_polyline(xs: np.ndarray, ys: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The part of a polyline with non-decreasing x up to `limit`, ending at the limit (interpolated there)."""
    inside = xs <= limit
    count = int(np.argmin(inside)) if not inside.all() else xs.size  # vertices up to the limit
    if count < xs.size and xs[count - 1] < limit:
        last_x, last_y, next_x, next_y = xs[count - 1], ys[count - 1], xs[count], ys[count]
        y_at_limit = last_y + (next_y - last_y) * (limit - last_x) / (next_x - last_x)
        return np.append(xs[:count], limit), np.append(ys[:count], y_at_limit)
    return xs[:count], ys[:count]


def _compat_aupro(fprs: np.ndarray, pros: np.ndarray, fpr_limit: float) -> float | None:
    keep = fprs < fpr_limit
    fprs, pros = fprs[keep], pros[keep]
    if fprs.size < 2 or fprs.max() == fprs.min():
        return None
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(abs(np.sum((fprs[1:] - fprs[:-1]) * (pros[1:] + pros[:-1]) * 0.5)))


# -------------------------------------------------------------------------------------------- public
def compute_metrics(
    pixel_scores: np.ndarray | None,
    masks: np.ndarray | None,
    image_scores: np.ndarray,
    image_labels: np.ndarray,
    *,
    fpr_limit: float = 0.3,
    pro_compat: bool = False,
    binarize: bool = False,
) -> AnomalyMetrics:
    """All metrics of one class. `pixel_scores` (N, H, W) float, `masks` (N, H, W) 0/1 or bool (or both None
    for image-level only), `image_scores` and `image_labels` (N,)."""
    accumulator = ClassMetricsAccumulator(fpr_limit=fpr_limit, pro_compat=pro_compat, binarize=binarize)
    accumulator.add(image_scores, image_labels, pixel_scores, masks)
    return accumulator.compute()


class ClassMetricsAccumulator:
    """Batch-by-batch evaluation of one class: `add(...)` per batch, `compute()` once."""

    def __init__(self, *, fpr_limit: float = 0.3, pro_compat: bool = False, binarize: bool = False) -> None:
        if not 0 < fpr_limit <= 1:
            raise MetricsInputError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.fpr_limit = fpr_limit
        self.pro_compat = pro_compat
        self.pixels = PixelAccumulator(binarize=binarize)
        self.images = ImageAccumulator()
        self.has_pixels = False

    def add(
        self,
        image_scores: np.ndarray,
        image_labels: np.ndarray,
        pixel_scores: np.ndarray | None = None,
        masks: np.ndarray | None = None,
    ) -> None:
        if pixel_scores is not None:
            if masks is None:
                raise MetricsInputError("pixel scores were given without masks")
            if len(pixel_scores) != np.asarray(image_scores).size:
                raise MetricsInputError(
                    f"{len(pixel_scores)} anomaly maps but {np.asarray(image_scores).size} image scores"
                )
        self.add_images(image_scores, image_labels)
        if pixel_scores is not None and masks is not None:
            self.add_pixels(pixel_scores, masks)

    def add_images(self, image_scores: np.ndarray, image_labels: np.ndarray) -> None:
        """Image-level scores alone (e.g. when they can only be fused after the whole class is seen)."""
        self.images.add(image_scores, image_labels)

    def add_pixels(self, pixel_scores: np.ndarray, masks: np.ndarray) -> None:
        """Anomaly maps (B, H, W) and their masks alone."""
        self.pixels.add(pixel_scores, masks)
        self.has_pixels = True

    def compute(self) -> AnomalyMetrics:
        """The metrics alone (the curves are not built). Consumes the pixels."""
        return self.evaluate(curves=False).metrics

    def evaluate(self, curves: bool = True) -> ClassEvaluation:
        """The metrics and the curves behind them (one computation). Consumes the pixels."""
        image = self.images.compute(curves)
        pixel = (
            self.pixels.compute(fpr_limit=self.fpr_limit, pro_compat=self.pro_compat, curves=curves)
            if self.has_pixels
            else CurveMetrics(None, None, None)
        )
        metrics = AnomalyMetrics(
            image.auroc,
            image.ap,
            image.f1max,
            pixel.auroc,
            pixel.ap,
            pixel.f1max,
            pixel.aupro,
            pixel.aupro_compat if self.pro_compat else None,
        )
        drawn = ClassCurves(image.roc, image.pr, pixel.roc, pixel.pr, pixel.pro, image.f1_threshold)
        return ClassEvaluation(metrics, drawn)


def mean_metrics(per_class: dict[str, AnomalyMetrics]) -> AnomalyMetrics:
    """Mean over classes of each metric, leaving out classes where it is not applicable (None)."""
    fields = list(AnomalyMetrics.__dataclass_fields__)
    means = {}
    for field in fields:
        values = [getattr(m, field) for m in per_class.values() if getattr(m, field) is not None]
        means[field] = float(np.mean(values)) if values else None
    return AnomalyMetrics(**means)
