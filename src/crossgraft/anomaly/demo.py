"""`crossgraft anomaly demo`: the built-in default run on synthetic data and the tiny backbone.

It writes the synthetic dataset, summarises it and the backbone's token features, and scores every test
image with a training-free baseline on the frozen features (each test patch's cosine distance to its
nearest normal training patch, per level, averaged over levels), evaluated with the exact metrics. The
AA-CLIP two-stage training is not part of this demo yet.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from crossgraft.anomaly.backbone import FrozenCLIP, load_clip
from crossgraft.anomaly.data import AnomalyDataset, EvalTransform, group_by_class, load_samples
from crossgraft.anomaly.data.synthetic import SyntheticConfig, make_synthetic_dataset
from crossgraft.anomaly.metrics import AnomalyMetrics, ClassMetricsAccumulator
from crossgraft.anomaly.report import format_table, write_csv, write_json
from crossgraft.anomaly.visualize import save_panel
from crossgraft.runlog import setup_run_logging

BATCH = 16


def ensure_synthetic(data_root: Path, config: SyntheticConfig) -> bool:
    """Write the synthetic set unless the same config already lies there. True when it was written."""
    stamp = data_root / "synthetic.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("config") == asdict(config):
        return False
    make_synthetic_dataset(data_root, config)
    return True


@torch.no_grad()
def patch_features(backbone: FrozenCLIP, loader: DataLoader, device: torch.device) -> list[torch.Tensor]:
    """Per level: L2-normalised post-LN patch tokens of every image, (num_images, N, W)."""
    per_level: list[list[torch.Tensor]] = [[] for _ in backbone.levels]
    for batch in loader:
        features = backbone.encode_image(batch["image"].to(device))
        for level, tokens in enumerate(features.level_tokens):
            per_level[level].append(F.normalize(backbone.ln_post(tokens[:, 1:]), dim=-1))
    return [torch.cat(chunks) for chunks in per_level]


def nearest_normal_distance(test: list[torch.Tensor], bank: list[torch.Tensor], grid: int) -> torch.Tensor:
    """Mean over levels of 1 - max cosine similarity to any normal patch: (B, grid, grid)."""
    scores = []
    for test_level, bank_level in zip(test, bank):
        memory = bank_level.reshape(-1, bank_level.shape[-1])  # (M, W)
        similarity = test_level @ memory.T  # (B, N, M)
        scores.append(1 - similarity.max(dim=-1).values)
    return torch.stack(scores).mean(0).reshape(-1, grid, grid)


def run_demo(
    out: Path, config: SyntheticConfig = SyntheticConfig(), clip: str = "tiny", device: str = "cpu"
) -> dict[str, AnomalyMetrics]:
    out = Path(out)
    logger = setup_run_logging(out, "demo.log")
    data_root = out / "data"
    written = ensure_synthetic(data_root, config)
    logger.info("synthetic dataset %s %s", "written to" if written else "reused from", data_root)
    train = group_by_class(load_samples("synthetic", data_root, split="train"))
    test = group_by_class(load_samples("synthetic", data_root, split="test"))
    logger.info("%-10s %6s %6s %6s  %s", "class", "train", "good", "defect", "defect types")
    for name, samples in test.items():
        defects = sorted({s.defect_type for s in samples if s.label == 1})
        logger.info(
            "%-10s %6d %6d %6d  %s", name, len(train.get(name, [])), sum(s.label == 0 for s in samples),
            sum(s.label == 1 for s in samples), ", ".join(defects),
        )

    torch_device = torch.device(device)
    backbone = load_clip(clip, image_size=config.size, device=torch_device)
    logger.info(
        "backbone %s: vision %d blocks x %d wide, text %d blocks x %d wide, embed %d; %d px -> %dx%d patches "
        "(positions interpolated from the trained %d px grid); levels %s",
        clip, backbone.num_vision_layers, backbone.vision_width, backbone.num_text_layers, backbone.text_width,
        backbone.embed_dim, backbone.image_size, backbone.grid_size, backbone.grid_size,
        backbone.clip.config.vision_config.image_size, backbone.levels,
    )
    transform = EvalTransform(backbone.image_size)
    results: dict[str, AnomalyMetrics] = {}
    panels = []
    for name, samples in test.items():
        train_loader = DataLoader(AnomalyDataset(train[name], transform), batch_size=BATCH)
        bank = patch_features(backbone, train_loader, torch_device)
        accumulator = ClassMetricsAccumulator(expected_pixels=len(samples) * config.size**2)
        shown: set[str] = set()
        for batch in DataLoader(AnomalyDataset(samples, transform), batch_size=BATCH):
            grid_scores = nearest_normal_distance(
                patch_features(backbone, [batch], torch_device), bank, backbone.grid_size
            )
            maps = F.interpolate(grid_scores[:, None], size=config.size, mode="bilinear", align_corners=True)[:, 0]
            maps_np = maps.cpu().numpy()
            accumulator.add(maps_np.reshape(len(maps_np), -1).max(1), batch["label"].numpy(), maps_np,
                            batch["mask"].numpy() > 0)
            for i, index in enumerate(batch["index"].tolist()):
                sample = samples[index]
                if sample.label == 1 and sample.defect_type not in shown:
                    shown.add(sample.defect_type)
                    panels.append(save_panel(sample.image_path, maps_np[i], out / "heatmaps" /
                                             f"{name}_{sample.defect_type}.png", mask=batch["mask"][i].numpy()))
        results[name] = accumulator.compute()

    title = f"Training-free nearest-normal-patch baseline, frozen {clip} CLIP, synthetic test split (%)"
    logger.info("\n%s", format_table(results, title=title))
    write_csv(results, out / "results.csv")
    write_json(results, out / "results.json", extra={"method": "nearest-normal-patch", "clip": clip})
    logger.info("results: %s, %s", out / "results.csv", out / "results.json")
    logger.info("heat maps (image | ground truth | heat map | overlay): %s (%d files)", out / "heatmaps", len(panels))
    logger.info("log: %s", out / "demo.log")
    return results
