"""Metrics against sklearn and against slow, literal implementations of the MVTec / AnomalyCLIP definitions."""

from bisect import bisect

import numpy as np
import pytest
from helpers import tied_class, trapezoid
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from crossgraft.anomaly.metrics import (
    MAX_CURVE_POINTS,
    ClassMetricsAccumulator,
    MetricsInputError,
    PixelAccumulator,
    compute_metrics,
    curve_area,
    mean_curve,
    mean_metrics,
    ordered_bits,
    score_of_bits,
)

TOL = 1e-9


# ------------------------------------------------------------------------------------ slow references
def slow_f1max(labels, scores):
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    return float(np.max(f1))


def slow_aupro_mvtec(scores, masks, limit=0.3):
    """Literal MVTec definition: every distinct threshold, regions per image, official trapezoid."""
    regions = []
    for image_index in range(len(masks)):
        labels, count = ndimage.label(masks[image_index], structure=np.ones((3, 3)))
        regions += [(image_index, labels == r) for r in range(1, count + 1)]
    negatives = ~masks.astype(bool)
    fprs, pros = [], []
    for threshold in np.unique(scores)[::-1]:
        predicted = scores >= threshold
        fprs.append((predicted & negatives).sum() / negatives.sum())
        pros.append(np.mean([predicted[i][region].sum() / region.sum() for i, region in regions]))
    x = np.concatenate(([0.0], np.minimum(fprs, 1), [1.0]))
    y = np.concatenate(([0.0], np.minimum(pros, 1), [1.0]))
    correction = 0.0
    if limit not in x:
        ins = bisect(x, limit)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (limit - x[ins - 1])
    keep = x <= limit
    x, y = x[keep], y[keep]
    return (np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / limit


def slow_aupro_compat(scores, masks, max_step=200, expect_fpr=0.3):
    """The AnomalyCLIP-family 200-threshold loop, written out."""
    min_th, max_th = scores.min(), scores.max()
    delta = (max_th - min_th) / max_step
    fprs, pros = [], []
    negatives = ~masks.astype(bool)
    for th in np.arange(min_th, max_th, delta):
        binary = scores > th
        overlaps = []
        for image_index in range(len(masks)):
            labels, count = ndimage.label(masks[image_index], structure=np.ones((3, 3)))
            for r in range(1, count + 1):
                region = labels == r
                overlaps.append(binary[image_index][region].sum() / region.sum())
        fprs.append(np.logical_and(negatives, binary).sum() / negatives.sum())
        pros.append(np.mean(overlaps))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < expect_fpr
    fprs, pros = fprs[keep], pros[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return abs(trapezoid(pros, fprs))


def blob_masks(rng, n, h, w, empty_every=3):
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        if i % empty_every == 0:
            continue  # empty mask: a normal image
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, h), rng.integers(0, w)  # centres may sit on the border
            ry, rx = rng.integers(1, 4, size=2)
            masks[i, max(0, cy - ry) : cy + ry, max(0, cx - rx) : cx + rx] = True
    return masks


def tied_maps(rng, masks, levels=12):
    """Coarse-quantised scores (many ties) that are higher inside the masks."""
    noise = rng.random(masks.shape)
    return np.round((noise + 0.6 * masks) * levels) / levels


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", range(5))
def test_image_metrics_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=300)
    scores = (np.round(rng.random(300) * 7 + labels * 2) / 7).astype(np.float32)  # heavy ties
    result = compute_metrics(None, None, scores, labels)
    assert abs(result.image_auroc - roc_auc_score(labels, scores)) <= TOL
    assert abs(result.image_ap - average_precision_score(labels, scores)) <= TOL
    assert abs(result.image_f1max - slow_f1max(labels, scores)) <= TOL
    assert result.pixel_auroc is None and result.aupro is None


@pytest.mark.parametrize("seed", range(4))
def test_pixel_metrics_equal_sklearn_and_mvtec_definition(seed):
    rng = np.random.default_rng(100 + seed)
    masks = blob_masks(rng, 7, 13, 11)
    scores = tied_maps(rng, masks).astype(np.float32)
    labels = masks.reshape(len(masks), -1).any(1).astype(int)
    result = compute_metrics(scores, masks, scores.reshape(len(masks), -1).max(1), labels, pro_compat=True)
    flat_masks, flat_scores = masks.ravel(), scores.ravel()
    assert abs(result.pixel_auroc - roc_auc_score(flat_masks, flat_scores)) <= TOL
    assert abs(result.pixel_ap - average_precision_score(flat_masks, flat_scores)) <= TOL
    assert abs(result.pixel_f1max - slow_f1max(flat_masks, flat_scores)) <= TOL
    assert abs(result.aupro - slow_aupro_mvtec(scores, masks)) <= TOL
    assert abs(result.aupro_compat - slow_aupro_compat(scores, masks)) <= TOL


def test_aupro_with_continuous_scores_regions_on_border_and_other_limits():
    rng = np.random.default_rng(7)
    masks = np.zeros((4, 12, 12), dtype=bool)
    masks[1, 0:3, 0:4] = True  # touches the corner
    masks[1, 8:12, 9:12] = True  # touches two borders
    masks[2, 5, 5] = masks[2, 6, 6] = True  # diagonal neighbours: one region under 8-connectivity
    masks[3, 2:10, 11] = True
    scores = (rng.random(masks.shape) + 0.4 * masks).astype(np.float32)
    for limit in (0.05, 0.3, 1.0):
        result = compute_metrics(scores, masks, np.zeros(4), [0, 1, 1, 1], fpr_limit=limit)
        assert abs(result.aupro - slow_aupro_mvtec(scores, masks, limit)) <= TOL
    assert result.image_auroc is not None


def test_streaming_chunks_and_batches_give_the_same_answer(monkeypatch):
    import crossgraft.anomaly.metrics as metrics

    rng = np.random.default_rng(3)
    masks = blob_masks(rng, 9, 16, 16)
    scores = tied_maps(rng, masks, levels=40).astype(np.float32)
    labels = masks.reshape(9, -1).any(1).astype(int)
    whole = compute_metrics(scores, masks, scores.max((1, 2)), labels, pro_compat=True)
    monkeypatch.setattr(metrics, "PARALLEL_SORT_MIN", 1)  # the normal pixels are sorted in parts, in threads
    monkeypatch.setattr(metrics, "TORCH_SORT_MIN", 1)  # by torch's sort
    accumulator = ClassMetricsAccumulator(pro_compat=True)
    for start in range(0, 9, 4):
        part = slice(start, start + 4)
        accumulator.add(scores[part].max((1, 2)), labels[part], scores[part], masks[part])
    streamed = accumulator.compute()
    for field, value in whole.as_dict().items():
        assert abs(value - getattr(streamed, field)) <= TOL, field


@pytest.mark.parametrize("torch_sort", [True, False])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_sorted_parts_count_like_one_sorted_array(workers, torch_sort, monkeypatch):
    import crossgraft.anomaly.metrics as metrics

    monkeypatch.setattr(metrics, "PARALLEL_SORT_MIN", 1)
    monkeypatch.setattr(metrics, "TORCH_SORT_MIN", 1 if torch_sort else 1 << 40)
    rng = np.random.default_rng(workers)
    levels = np.array([0, 1, 7, 2**31 - 1, 2**31, 2**31 + 5, 2**32 - 1], dtype=np.uint32)  # across the sign bit
    values = levels[rng.integers(0, len(levels), 10_001)]  # many ties, in every part
    expected = np.sort(values)
    parts = metrics.sorted_parts([values[:5000], values[5000:]], workers)
    assert len(parts) >= workers and all(np.all(np.diff(p.astype(np.int64)) >= 0) for p in parts)
    probes = np.concatenate([levels, levels + 1, levels - 1]).astype(np.uint32)
    for side in ("left", "right"):
        assert np.array_equal(metrics._count_below(parts, probes, side), np.searchsorted(expected, probes, side))


def test_single_label_classes_are_not_applicable_and_left_out_of_the_mean():
    rng = np.random.default_rng(0)
    scores = rng.random((3, 8, 8)).astype(np.float32)
    all_normal = compute_metrics(scores, np.zeros((3, 8, 8), bool), scores.max((1, 2)), [0, 0, 0])
    assert all_normal.image_auroc is None and all_normal.pixel_auroc is None and all_normal.aupro is None
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 2:4, 2:4] = True
    all_anomalous = compute_metrics(scores, masks, scores.max((1, 2)), [1, 1, 1])
    assert all_anomalous.image_auroc is None and all_anomalous.pixel_auroc is not None
    masks[0] = False
    mixed = compute_metrics(scores, masks, [0.1, 0.9, 0.8], [0, 1, 1])
    assert mixed.image_auroc == 1.0
    mean = mean_metrics({"a": all_anomalous, "b": mixed})
    assert mean.image_auroc == 1.0  # 'a' has no image AUROC and is not counted as 0
    assert mean.pixel_auroc == pytest.approx((all_anomalous.pixel_auroc + mixed.pixel_auroc) / 2)


def test_perfect_and_inverted_scores():
    masks = np.zeros((2, 6, 6), bool)
    masks[1, 1:3, 1:3] = True
    perfect = compute_metrics(masks.astype(np.float32), masks, [0.0, 1.0], [0, 1])
    assert perfect.pixel_auroc == 1.0 and perfect.pixel_ap == 1.0 and perfect.pixel_f1max == 1.0
    assert perfect.aupro == pytest.approx(1.0)
    inverted = compute_metrics((~masks).astype(np.float32), masks, [1.0, 0.0], [0, 1])
    assert inverted.pixel_auroc == 0.0 and inverted.image_auroc == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_scores_are_rejected(bad):
    scores = np.zeros((2, 4, 4), np.float32)
    scores[0, 1, 1] = bad
    masks = np.zeros((2, 4, 4), bool)
    masks[1, 0, 0] = True
    with pytest.raises(MetricsInputError, match="NaN or infinite"):
        compute_metrics(scores, masks, [0, 1], [0, 1])
    with pytest.raises(MetricsInputError, match="image scores"):
        compute_metrics(None, None, [bad, 1.0], [0, 1])


def test_non_binary_masks_are_rejected_unless_binarised_explicitly():
    scores = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[1, :2, :2] = 255
    with pytest.raises(MetricsInputError, match="binary"):
        compute_metrics(scores, masks, [0, 1], [0, 1])
    result = compute_metrics(scores, masks, [0, 1], [0, 1], binarize=True)
    expected = compute_metrics(scores, masks > 0, [0, 1], [0, 1])
    assert result == expected


def test_shape_and_label_errors_name_the_problem():
    with pytest.raises(MetricsInputError, match="differ in shape"):
        compute_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool), [0, 1], [0, 1])
    with pytest.raises(MetricsInputError, match="3 anomaly maps but 2 image scores"):
        compute_metrics(np.zeros((3, 4, 4)), np.zeros((3, 4, 4), bool), [0, 1], [0, 1])
    with pytest.raises(MetricsInputError, match="0 or 1"):
        compute_metrics(None, None, [0.1, 0.2], [0, 2])
    with pytest.raises(MetricsInputError, match="fpr_limit"):
        compute_metrics(None, None, [0.1, 0.2], [0, 1], fpr_limit=0)


def test_ordered_bits_preserve_float_order_and_merge_signed_zero():
    values = np.array([-np.float32(3.5), -1e-30, -0.0, 0.0, 1e-30, 2.0, 7e30], dtype=np.float32)
    bits = ordered_bits(values)
    assert (np.diff(bits.astype(np.float64)) >= 0).all()
    assert bits[2] == bits[3]  # -0.0 ties with 0.0, as in sklearn
    assert len(set(bits.tolist())) == len(values) - 1


def test_accumulator_holds_score_bits_not_float_maps():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 32, 32), bool)
    masks[2, 3:9, 3:9] = True
    scores = (rng.random((4, 32, 32)) + masks).astype(np.float32)
    accumulator = PixelAccumulator()
    accumulator.add(scores[:2], masks[:2])
    accumulator.add(scores[2:], masks[2:])
    # 4 bytes a normal pixel (its score bits), 8 an anomalous one (score bits and region id)
    assert accumulator.nbytes == 4 * (~masks).sum() + 8 * masks.sum()
    result = accumulator.compute()
    assert abs(result.auroc - roc_auc_score(masks.ravel(), scores.ravel())) <= TOL


# ------------------------------------------------------------------------------------------------ curves
def test_curves_integrate_to_the_reported_metrics():
    scores, masks, image_scores, labels = tied_class()
    accumulator = ClassMetricsAccumulator()
    accumulator.add(image_scores, labels, scores, masks)
    result = accumulator.evaluate()
    metrics, curves = result.metrics, result.curves
    pairs = [
        (curves.image_roc, metrics.image_auroc),
        (curves.image_pr, metrics.image_ap),
        (curves.pixel_roc, metrics.pixel_auroc),
        (curves.pixel_pr, metrics.pixel_ap),
        (curves.pro, metrics.aupro),
    ]
    for curve, value in pairs:
        assert curve.value == value
        assert abs(curve_area(curve) - value) < 1e-9
        assert np.all(np.diff(curve.x) >= 0)
    assert abs(curve_area(curves.pixel_roc) - roc_auc_score(masks.ravel(), scores.ravel())) < 1e-9
    assert curves.pro.x_limit == 0.3 and abs(curves.pro.value - slow_aupro_mvtec(scores, masks)) < 1e-9
    # the pixel ROC curve is sklearn's: every point of its curve lies on ours
    fpr, tpr, _ = roc_curve(masks.ravel(), scores.ravel())
    assert all(on_polyline(curves.pixel_roc.x, curves.pixel_roc.y, f, t) for f, t in zip(fpr, tpr))


def on_polyline(xs, ys, x, y, tol=1e-12):
    """Whether (x, y) lies on one of the polyline's segments."""
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        if x0 - tol <= x <= x1 + tol:
            expected = y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
            if (x1 == x0 and min(y0, y1) - tol <= y <= max(y0, y1) + tol) or abs(expected - y) <= tol:
                return True
    return False


def test_the_image_threshold_is_the_f1max_point():
    scores, masks, image_scores, labels = tied_class(seed=5, images=12)
    evaluation = compute_class(image_scores, labels)
    threshold = evaluation.curves.image_threshold
    assert threshold in image_scores
    predicted = image_scores >= threshold
    tp = int((predicted & (labels == 1)).sum())
    f1 = 2 * tp / (predicted.sum() + labels.sum())
    assert abs(f1 - evaluation.metrics.image_f1max) < 1e-12
    assert abs(f1 - slow_f1max(labels, image_scores)) < 1e-12


def compute_class(image_scores, labels):
    accumulator = ClassMetricsAccumulator()
    accumulator.add_images(image_scores, labels)
    return accumulator.evaluate()


@pytest.mark.parametrize("value", [-2.5, -0.0, 0.0, 1e-30, 0.37, 3e8])
def test_scores_come_back_from_their_ordered_bits(value):
    assert score_of_bits(ordered_bits(np.array([value], np.float32))[0]) == np.float32(value)


def test_the_mean_curve_has_the_mean_area():
    curves = []
    for seed in range(4):
        scores, masks, image_scores, labels = tied_class(seed=seed)
        accumulator = ClassMetricsAccumulator()
        accumulator.add(image_scores, labels, scores, masks)
        curves.append(accumulator.evaluate().curves)
    for name in ("image_roc", "image_pr", "pixel_roc", "pro"):
        per_class = [getattr(c, name) for c in curves]
        mean = mean_curve(per_class)
        assert abs(curve_area(mean) - np.mean([curve_area(c) for c in per_class])) < 1e-9
        assert abs(mean.value - np.mean([c.value for c in per_class])) < 1e-12


def test_long_curves_are_thinned_for_drawing_within_the_bound():
    rng = np.random.default_rng(0)
    scores, masks = rng.random((2, 300, 300)).astype(np.float32), rng.random((2, 300, 300)) < 0.3
    accumulator = ClassMetricsAccumulator()
    accumulator.add(np.array([0.2, 0.8], np.float32), np.array([1, 1]), scores, masks)
    curve = accumulator.evaluate().curves.pixel_roc
    assert curve.x.size <= MAX_CURVE_POINTS + 2
    # the thinned curve's area is within length^2 / (4 max_points) of the exact metric (length <= 2 here)
    assert abs(curve_area(curve) - curve.value) <= 4 / (4 * MAX_CURVE_POINTS)
