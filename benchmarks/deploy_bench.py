"""Images per second of the deployable anomaly graph on this CPU: torch eager fp32 against ONNX Runtime and OpenVINO.

Part 1 (speed): the test-time graph (adapted ViT, stored text anchors, the reference map formula) at ViT-L/14-336
sizes with random weights (see train_bench.py), at 336 and 518 px, batch 1. Rows: torch eager fp32 (the baseline),
onnxruntime fp32, OpenVINO fp32, onnxruntime int8 (`export --quantize int8`: dynamic quantisation of the matrix
multiplications), and OpenVINO bf16 (what OpenVINO's CPU plugin picks by itself on a CPU with bf16 units). Rounds
are interleaved (every engine once per round) so that the machine's noise hits all of them alike; the median time
per image is printed with its ratio to torch and the map's largest difference from torch (relative to its maximum).

Part 2 (accuracy): the same engines on the demo's trained tiny model (`make demo`; trained here when runs/demo/run is
missing), pixel AUROC on the demo's held-out synthetic classes, and its change against torch fp32 in points.

    python benchmarks/deploy_bench.py [--sizes 336 518] [--rounds 5] [--threads 2] [--skip_speed] [--skip_accuracy]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from train_bench import build

from crossgraft.anomaly.config import DemoConfig
from crossgraft.anomaly.data import load_samples
from crossgraft.anomaly.data.transforms import load_image, load_mask
from crossgraft.anomaly.demo import run_demo, split_classes
from crossgraft.anomaly.deploy.engines import (
    METADATA,
    ExportMetadata,
    OnnxRuntimeEngine,
    OpenVINOEngine,
    TorchEngine,
    open_engine,
)
from crossgraft.anomaly.deploy.export import relative_difference, write_graph
from crossgraft.anomaly.detector import AnomalyDetector, Detection, resized_pixels
from crossgraft.anomaly.metrics import compute_metrics

CLASS_TEXT = "metal nut"
Runner = Callable[[np.ndarray], Detection]


def engine_runners(graph: AnomalyDetector, folder: Path, threads: int) -> dict[str, Runner]:
    """One callable per engine on the same graph: uint8 images (B, S, S, 3) of class 0 -> Detection."""
    side = graph.model.backbone.image_size
    runners: dict[str, Runner] = {}

    @torch.no_grad()
    def eager(images: np.ndarray) -> Detection:
        outputs = graph(torch.from_numpy(images), torch.zeros(len(images), dtype=torch.long))
        return Detection(*(t.numpy() for t in outputs))

    runners["torch eager fp32"] = eager
    for name, quantize in (("fp32", "none"), ("int8", "int8")):
        sub = folder / name
        sub.mkdir(parents=True)
        graph_file = write_graph(graph, sub, "onnx", quantize)
        metadata = ExportMetadata(
            graph_file.name,
            "onnx",
            side,
            ["c"],
            [CLASS_TEXT],
            "industrial",
            "base",
            "bench",
            0,
            "deploy_bench",
            quantization=quantize,
        )
        (sub / METADATA).write_text(json.dumps(asdict(metadata)))
        ort_engine = OnnxRuntimeEngine(sub, threads)
        runners[f"onnxruntime {name}"] = lambda images, e=ort_engine: e.run(images, "c")
        if name == "fp32":
            for precision in ("f32", "bf16"):
                ov_engine = OpenVINOEngine(sub, threads, precision)
                label = "OpenVINO fp32" if precision == "f32" else "OpenVINO bf16 (CPU plugin default here)"
                runners[label] = lambda images, e=ov_engine: e.run(images, "c")
    return runners


def speed(size: int, rounds: int, threads: int, batch: int) -> None:
    torch.manual_seed(0)
    model = build(size, "cpu").eval()
    graph = AnomalyDetector(model, [CLASS_TEXT], True, "industrial").eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        runners = engine_runners(graph, Path(folder), threads)
        print(f"  (exports and compilation: {time.perf_counter() - started:.0f} s)")
        reference = runners["torch eager fp32"](images).anomaly_map
        differences = {name: relative_difference(reference, run(images).anomaly_map) for name, run in runners.items()}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(rounds):
            for name, run in runners.items():
                started = time.perf_counter()
                run(images)
                times[name].append((time.perf_counter() - started) / batch)
    base = statistics.median(times["torch eager fp32"])
    print(f"{'engine':<42}{'s/image':>9}{'images/s':>10}{'vs torch':>10}{'map diff':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<42}{median:>9.3f}{1 / median:>10.2f}{base / median:>9.2f}x{differences[name]:>10.1e}")


def mask_at(mask_path: Path | None, image_path: Path, side: int) -> np.ndarray:
    """A sample's mask at side x side (nearest), bool."""
    mask = load_mask(mask_path, load_image(image_path).size, image_path)
    return np.asarray(mask.resize((side, side), Image.Resampling.NEAREST)) > 0


def accuracy(threads: int) -> None:
    """Pixel AUROC of each engine on the demo's held-out classes with the demo's trained model."""
    demo = DemoConfig(device="cpu")
    run_dir = demo.out / "run"
    if not (run_dir / "image_adapter.pth").is_file():
        print(f"  training the demo model first ({run_dir})")
        run_demo(demo)
    torch_engine = open_engine("torch", save_path=run_dir)
    assert isinstance(torch_engine, TorchEngine)
    _, heldout = split_classes(demo.synthetic.classes)
    samples = load_samples("synthetic", demo.out / "data", split="test", classes=heldout)
    side = torch_engine.image_size
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for class_name in heldout:
            class_samples = [s for s in samples if s.class_name == class_name]
            images = np.stack([resized_pixels(load_image(s.image_path), side) for s in class_samples])
            masks = np.stack([mask_at(s.mask_path, s.image_path, side) for s in class_samples])
            labels = np.array([s.label for s in class_samples])
            text = torch_engine.graph(class_name)
            runners = engine_runners(text, Path(folder) / class_name, threads)
            for name, run in runners.items():
                output = run(images)
                auroc = compute_metrics(output.anomaly_map, masks, output.image_score, labels).pixel_auroc
                rows.setdefault(name, []).append(float(auroc or 0.0))
    base = float(np.mean(rows["torch eager fp32"]))
    print(f"{'engine':<42}{'pixel AUROC':>12}{'change (points)':>17}")
    for name, values in rows.items():
        mean = float(np.mean(values))
        print(f"{name:<42}{100 * mean:>12.2f}{100 * (mean - base):>+17.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[336, 518], help="image sides to time")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (after one warm-up call)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every engine (torch included)")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--skip_speed", action="store_true", help="only the accuracy part")
    parser.add_argument("--skip_accuracy", action="store_true", help="only the speed part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_speed:
        for size in args.sizes:
            print(f"\nViT-L/14-336 sizes, random weights, {size} px, batch {args.batch}, {args.threads} threads")
            speed(size, args.rounds, args.threads, args.batch)
    if not args.skip_accuracy:
        print("\nthe demo's trained tiny model on its held-out synthetic classes (pixel AUROC, mean over classes)")
        accuracy(args.threads)


if __name__ == "__main__":
    main()
