"""Pixel + image metrics on an MVTec-sized synthetic set: crossgraft vs the sklearn + 200-threshold baseline.

15 classes with MVTec AD's test-set sizes (1725 images) at 518x518. Anomaly maps are random 37x37 patch
grids (the ViT-L/14 grid at 518 px) with a bump over each defect, upsampled bilinearly and blurred, so
ties and smoothness are realistic; anomalous masks hold 1-3 blobs. Ours runs on every class. The
baseline (what the public AA-CLIP / AnomalyCLIP code does: sklearn over flattened pixels plus the
200-threshold AUPRO loop) runs on `--baseline_classes` classes and is extrapolated by pixel count.

    python benchmarks/metrics_bench.py [--classes 15] [--baseline_classes 2] [--size 518]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import cv2
import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from crossgraft.anomaly.metrics import ClassMetricsAccumulator, cpu_workers

MVTEC_TEST_SIZES = {
    "bottle": 83,
    "cable": 150,
    "capsule": 132,
    "carpet": 117,
    "grid": 78,
    "hazelnut": 110,
    "leather": 124,
    "metal_nut": 115,
    "pill": 167,
    "screw": 160,
    "tile": 117,
    "toothbrush": 42,
    "transistor": 100,
    "wood": 79,
    "zipper": 151,
}
GRID = 37
EVAL_BATCH = 32


def make_class(rng: np.random.Generator, count: int, size: int) -> tuple[np.ndarray, ...]:
    maps = np.empty((count, size, size), np.float32)
    masks = np.zeros((count, size, size), bool)
    labels = (rng.random(count) < 0.73).astype(np.int64)  # MVTec's test sets are ~73% anomalous
    for i in range(count):
        if labels[i]:
            for _ in range(rng.integers(1, 4)):
                center = tuple(int(c) for c in rng.integers(0, size, 2))
                axes = tuple(int(a) for a in rng.integers(size // 40, size // 8, 2))
                cv2.ellipse(masks[i].view(np.uint8), center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        grid = rng.random((GRID, GRID)).astype(np.float32)
        grid += 1.2 * cv2.resize(masks[i].astype(np.float32), (GRID, GRID), interpolation=cv2.INTER_AREA)
        maps[i] = cv2.GaussianBlur(cv2.resize(grid, (size, size), interpolation=cv2.INTER_LINEAR), (0, 0), 4)
    image_scores = maps.reshape(count, -1).max(1)
    return maps, masks, labels, image_scores


def ours(maps, masks, labels, image_scores, pro_compat):
    accumulator = ClassMetricsAccumulator(pro_compat=pro_compat)
    for start in range(0, len(maps), EVAL_BATCH):
        part = slice(start, start + EVAL_BATCH)
        accumulator.add(image_scores[part], labels[part], maps[part], masks[part])
    return accumulator.compute()


def baseline(maps, masks, labels, image_scores):
    """sklearn on flattened pixels and the 200-threshold AUPRO loop, as the public code does."""
    flat_masks, flat_maps = masks.ravel(), maps.ravel()
    pixel_auroc = roc_auc_score(flat_masks, flat_maps)
    pixel_ap = average_precision_score(flat_masks, flat_maps)
    precision, recall, _ = precision_recall_curve(flat_masks, flat_maps)
    f1 = 2 * precision * recall / (precision + recall + 1e-12)
    pixel_f1 = f1.max()
    roc_auc_score(labels, image_scores), average_precision_score(labels, image_scores)
    region_sets = []
    for mask in masks:
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        region_sets.append([np.argwhere(labelled == r) for r in range(1, count + 1)])
    min_th, max_th = maps.min(), maps.max()
    delta = (max_th - min_th) / 200
    fprs, pros = [], []
    inverse = ~masks
    for th in np.arange(min_th, max_th, delta):
        binary = maps > th
        overlaps = [
            binary[i][c[:, 0], c[:, 1]].sum() / len(c) for i, regions in enumerate(region_sets) for c in regions
        ]
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
        pros.append(np.mean(overlaps))
    return pixel_auroc, pixel_ap, pixel_f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=15, help="how many MVTec-sized classes (max 15)")
    parser.add_argument("--baseline_classes", type=int, default=2, help="classes the slow baseline runs on")
    parser.add_argument("--size", type=int, default=518, help="map side in pixels")
    parser.add_argument("--pro_compat", action="store_true", help="also compute the 200-threshold AUPRO (ours)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    names = list(MVTEC_TEST_SIZES)[: args.classes]
    ours_time = base_time = base_pixels = total_pixels = ours_on_baseline_classes = 0.0
    worst_bytes_per_pixel = 0.0
    print(f"{'class':<12}{'images':>7}{'Mpx':>8}{'ours s':>9}{'peak B/px':>11}{'baseline s':>12}{'|dAUROC|':>10}")
    for index, name in enumerate(names):
        maps, masks, labels, image_scores = make_class(rng, MVTEC_TEST_SIZES[name], args.size)
        pixels = maps.size
        total_pixels += pixels
        tracemalloc.start()
        start = time.perf_counter()
        result = ours(maps, masks, labels, image_scores, args.pro_compat)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        ours_time += elapsed
        bytes_per_pixel = peak / pixels
        worst_bytes_per_pixel = max(worst_bytes_per_pixel, bytes_per_pixel)
        base_cell, delta_cell = "-", "-"
        if index < args.baseline_classes:
            start = time.perf_counter()
            base_auroc, _, _ = baseline(maps, masks, labels, image_scores)
            base_elapsed = time.perf_counter() - start
            base_time += base_elapsed
            ours_on_baseline_classes += elapsed
            base_pixels += pixels
            base_cell, delta_cell = f"{base_elapsed:.1f}", f"{abs(base_auroc - result.pixel_auroc):.1e}"
        print(
            f"{name:<12}{len(maps):>7}{pixels / 1e6:>8.1f}{elapsed:>9.2f}{bytes_per_pixel:>11.1f}"
            f"{base_cell:>12}{delta_cell:>10}"
        )
        del maps, masks
    print()
    print(
        f"ours: all pixel + image metrics incl. AUPRO, {len(names)} classes, {total_pixels / 1e6:.0f} Mpx: "
        f"{ours_time:.1f} s on {cpu_workers()} cores; peak extra memory {worst_bytes_per_pixel:.1f} bytes/pixel of a "
        "class (numpy's, as tracemalloc sees it; torch's sort adds up to 12 bytes per pixel of one batch per core)"
    )
    if base_pixels:
        extrapolated = base_time * total_pixels / base_pixels
        print(
            f"baseline: {base_time:.1f} s on {args.baseline_classes} classes ({base_pixels / 1e6:.0f} Mpx), "
            f"extrapolated by pixel count to all classes: {extrapolated:.0f} s"
        )
        print(
            f"speed-up measured on those {args.baseline_classes} classes: {base_time / ours_on_baseline_classes:.1f}x "
            f"({base_time:.1f} s / {ours_on_baseline_classes:.2f} s)"
        )
        print(f"speed-up on all classes, extrapolated: {extrapolated / ours_time:.1f}x (baseline extrapolated / ours)")


if __name__ == "__main__":
    main()
