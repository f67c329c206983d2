"""The `crossgraft` command: `crossgraft anomaly …` (AA-CLIP family)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_IMG_SIZE = 518  # AA-CLIP's run size for ViT-L/14 (37 x 37 patches)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the hand-made line breaks of descriptions."""


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------- shared flags
def add_data_args(parser: argparse.ArgumentParser, split: str = "test") -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="synthetic",
                       help="dataset name: MVTec, VisA, BTAD, MPDD, Brain, Liver, Retina, Colon_*, synthetic, "
                       "custom (an MVTec-layout folder)")
    group.add_argument("--data_root", type=Path, required=True, help="folder that holds the dataset")
    group.add_argument("--meta", type=Path, default=None,
                       help="metadata file instead of the folder layout: the public AA-CLIP .jsonl "
                       "(image_path, label, class_name, mask_path) or an AnomalyCLIP meta.json; paths relative "
                       "to --data_root")
    group.add_argument("--split", default=split, help="which split to read (train or test)")
    group.add_argument("--classes", nargs="+", default=None, help="only these classes (default: all)")
    group.add_argument("--allow_missing_masks", action="store_true",
                       help="accept anomalous images without a mask (image-level evaluation only)")


def add_clip_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--clip", default="tiny",
                       help="CLIP weights: a Hugging Face id or local directory (openai/clip-vit-large-patch14-336 "
                       "is the paper's), an OpenAI-format .pt/.pth file (ViT-L-14-336px.pt), or 'tiny' "
                       "(random, offline, for tests and demos)")
    group.add_argument("--tokenizer", default=None,
                       help="CLIP tokenizer (HF id or directory); default: from --clip, or the OpenAI one "
                       "for .pt files")
    group.add_argument("--img_size", type=int, default=None,
                       help=f"input side in pixels, a multiple of the patch size (default: {DEFAULT_IMG_SIZE} for real "
                       "CLIPs, the preset's own size for tiny); positions are interpolated bicubically")
    group.add_argument("--gelu", choices=["quick", "exact"], default="quick",
                       help="MLP activation: CLIP's own QuickGELU, or exact GELU as the public AA-CLIP code runs")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _img_size(args: argparse.Namespace) -> int | None:
    if args.img_size is not None:
        return args.img_size
    return None if args.clip == "tiny" else DEFAULT_IMG_SIZE


# ------------------------------------------------------------------------------------------ commands
def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.data.synthetic import SyntheticConfig, make_synthetic_dataset

    config = SyntheticConfig(args.classes, args.train_per_class, args.test_per_class, args.size, args.seed)
    counts = make_synthetic_dataset(args.out, config)
    print(f"wrote a synthetic MVTec-layout dataset to {args.out}")
    for name, per_split in counts.items():
        print(f"  {name:<10} " + ", ".join(f"{key} {value}" for key, value in per_split.items()))
    return 0


def cmd_inspect_data(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.data import get_spec, group_by_class, load_samples

    samples = load_samples(args.dataset, args.data_root, split=args.split, meta=args.meta, classes=args.classes,
                           allow_missing_masks=args.allow_missing_masks)
    spec = get_spec(args.dataset)
    print(f"{spec.name} ({spec.domain}), {args.split} split: {len(samples)} images, every file readable")
    print(f"  {'class':<14}{'normal':>8}{'anomalous':>11}{'masks':>7}  defect types")
    for name, group in group_by_class(samples).items():
        anomalous = [s for s in group if s.label == 1]
        defects = sorted({s.defect_type for s in anomalous})
        print(f"  {name:<14}{len(group) - len(anomalous):>8}{len(anomalous):>11}"
              f"{sum(s.mask_path is not None for s in group):>7}  {', '.join(defects)}")
    return 0


def cmd_k_shot(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.data import load_samples, sample_k_shot, write_jsonl

    samples = load_samples(args.dataset, args.data_root, split=args.split, meta=args.meta, classes=args.classes,
                           allow_missing_masks=args.allow_missing_masks)
    chosen = sample_k_shot(samples, args.shot, args.seed)
    out = args.out or Path(f"{args.dataset}_{args.shot}shot_seed{args.seed}.jsonl")
    write_jsonl(chosen, out, root=args.data_root)
    print(f"{len(chosen)} images ({args.shot} per class, seed {args.seed}) written to {out}; "
          f"use it with --meta {out}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    import torch

    from crossgraft.anomaly.backbone import load_clip

    backbone = load_clip(args.clip, image_size=_img_size(args), gelu=args.gelu, tokenizer=args.tokenizer,
                         device=_device(args.device))
    images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size, device=backbone.device)
    features = backbone.encode_image(images)
    vv = backbone.encode_image_vv(images, surgery_from=backbone.levels[0])
    text = backbone.encode_text(["a photo of a damaged object.", "object"])
    print(f"CLIP {args.clip}: vision {backbone.num_vision_layers} blocks x {backbone.vision_width}, text "
          f"{backbone.num_text_layers} blocks x {backbone.text_width}, embedding {backbone.embed_dim}")
    print(f"input {backbone.image_size} px, patch {backbone.patch_size}, grid {backbone.grid_size}x{backbone.grid_size}"
          f" (trained at {backbone.clip.config.vision_config.image_size} px), gelu {backbone.gelu}")
    for level, plain, surgery in zip(backbone.levels, features.level_tokens, vv.level_tokens):
        print(f"  level {level:>2}: tokens {tuple(plain.shape)}; mean token norm plain {plain.norm(dim=-1).mean():.3f}"
              f", V-V {surgery.norm(dim=-1).mean():.3f}")
    print(f"image embedding {tuple(features.image_embed.shape)}, text embedding {tuple(text.shape)}")
    print(f"trainable CLIP parameters: {sum(p.numel() for p in backbone.parameters() if p.requires_grad)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.data.synthetic import SyntheticConfig
    from crossgraft.anomaly.demo import run_demo

    config = SyntheticConfig(args.classes, args.train_per_class, args.test_per_class, args.size, args.seed)
    run_demo(args.out, config, clip=args.clip, device=_device(args.device))
    return 0


def add_synthetic_args(parser: argparse.ArgumentParser, classes: int = 6) -> None:
    parser.add_argument("--classes", type=int, default=classes, help="number of object/texture classes")
    parser.add_argument("--train_per_class", type=int, default=10, help="normal training images per class")
    parser.add_argument("--test_per_class", type=int, default=12,
                        help="test images per class: half normal, the rest spread over scratch/spot/missing")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same images")


# -------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossgraft",
        description="Graft cross-modal attention onto pretrained vision-language models and train them fairly "
        "against their base models.",
        formatter_class=HelpFormatter,
    )
    families = parser.add_subparsers(dest="family", metavar="FAMILY", required=True)
    anomaly = families.add_parser(
        "anomaly", help="anomaly-aware CLIP (AA-CLIP and its cross-attention variants)",
        description="Zero-/few-shot anomaly detection and segmentation with adapted CLIP.",
        formatter_class=HelpFormatter,
    )
    commands = anomaly.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="the built-in default run: synthetic data, tiny CLIP, results table and heat maps",
        description="Write the synthetic dataset, summarise it and the backbone, score the test images with a "
        "training-free baseline on frozen features, print the metrics table, write heat maps.",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (data, results, heat maps, log)")
    demo.add_argument("--clip", default="tiny", help="CLIP weights (see `crossgraft anomaly features --help`)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_synthetic_args(demo)
    demo.set_defaults(func=cmd_demo)

    synthetic = commands.add_parser(
        "make-synthetic", help="write a synthetic MVTec-layout dataset with drawn defects and exact masks",
        description="Procedural textures/objects (train/good, test/good, test/<defect>, "
        "ground_truth/<defect>/*_mask.png); defects: scratch, spot, missing.",
        formatter_class=HelpFormatter,
    )
    synthetic.add_argument("--out", type=Path, required=True, help="folder to write the dataset into")
    add_synthetic_args(synthetic)
    synthetic.set_defaults(func=cmd_make_synthetic)

    inspect = commands.add_parser(
        "inspect-data", help="read a dataset, check every file, print counts per class",
        description="Reads the split, checks that every image and mask exists, is readable and has matching size.",
        formatter_class=HelpFormatter,
    )
    add_data_args(inspect)
    inspect.set_defaults(func=cmd_inspect_data)

    kshot = commands.add_parser(
        "k-shot", help="draw a seeded k-shot subset (k/2 normal + k/2 anomalous per class) into a jsonl",
        description="The jsonl can be passed back with --meta so that a run can be repeated exactly.",
        formatter_class=HelpFormatter,
    )
    add_data_args(kshot)
    kshot.add_argument("--shot", type=int, required=True, help="images per class, even: half normal, half anomalous")
    kshot.add_argument("--seed", type=int, default=111, help="selection seed (per class: seed and class name)")
    kshot.add_argument("--out", type=Path, default=None,
                       help="jsonl to write (default: {dataset}_{shot}shot_seed{seed}.jsonl)")
    kshot.set_defaults(func=cmd_k_shot)

    features = commands.add_parser(
        "features", help="load a CLIP backbone and print its token features at each level",
        description="Loads the frozen backbone, runs random images through the plain and V-V paths and prints "
        "shapes and norms: a quick check that weights, tokenizer and image size fit together.",
        formatter_class=HelpFormatter,
    )
    add_clip_args(features)
    features.add_argument("--batch", type=int, default=2, help="random images to run")
    features.set_defaults(func=cmd_features)
    return parser


def main(argv: list[str] | None = None) -> int:
    from crossgraft.anomaly.backbone import BackboneError
    from crossgraft.anomaly.data.records import DataError
    from crossgraft.anomaly.metrics import MetricsInputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, BackboneError, MetricsInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
