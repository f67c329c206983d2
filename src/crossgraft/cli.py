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
def add_data_args(parser: argparse.ArgumentParser, default_dataset: str = "synthetic", with_split: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default=default_dataset,
        help="dataset name: MVTec, VisA, BTAD, MPDD, Brain, Liver, Retina, Colon_*, synthetic, "
        "custom (an MVTec-layout folder)",
    )
    group.add_argument("--data_root", type=Path, required=True, help="folder that holds the dataset")
    group.add_argument(
        "--meta",
        type=Path,
        default=None,
        help="metadata file instead of the folder layout: the public AA-CLIP .jsonl "
        "(image_path, label, class_name, mask_path) or an AnomalyCLIP meta.json; paths relative "
        "to --data_root",
    )
    if with_split:
        group.add_argument("--split", default="test", help="which split to read (train or test)")
    group.add_argument("--classes", nargs="+", default=None, help="only these classes (default: all)")
    group.add_argument(
        "--allow_missing_masks",
        action="store_true",
        help="accept anomalous images without a mask (image-level evaluation only)",
    )


def add_clip_args(parser: argparse.ArgumentParser, with_gelu: bool = True) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument(
        "--clip",
        default="tiny",
        help="CLIP weights: a Hugging Face id or local directory (openai/clip-vit-large-patch14-336 "
        "is the paper's), an OpenAI-format .pt/.pth file (ViT-L-14-336px.pt), or 'tiny' "
        "(random, offline, for tests and demos)",
    )
    group.add_argument(
        "--tokenizer",
        default=None,
        help="CLIP tokenizer (HF id or directory); default: from --clip, or the OpenAI one for .pt files",
    )
    group.add_argument(
        "--img_size",
        type=int,
        default=None,
        help=f"input side in pixels, a multiple of the patch size (default: {DEFAULT_IMG_SIZE} for real "
        "CLIPs, the preset's own size for tiny); positions are interpolated bicubically",
    )
    if with_gelu:
        group.add_argument(
            "--gelu",
            choices=["quick", "exact"],
            default="quick",
            help="MLP activation: CLIP's own QuickGELU, or exact GELU as the public AA-CLIP code runs",
        )
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

    samples = load_samples(
        args.dataset,
        args.data_root,
        split=args.split,
        meta=args.meta,
        classes=args.classes,
        allow_missing_masks=args.allow_missing_masks,
    )
    spec = get_spec(args.dataset)
    print(f"{spec.name} ({spec.domain}), {args.split} split: {len(samples)} images, every file readable")
    print(f"  {'class':<14}{'normal':>8}{'anomalous':>11}{'masks':>7}  defect types")
    for name, group in group_by_class(samples).items():
        anomalous = [s for s in group if s.label == 1]
        defects = sorted({s.defect_type for s in anomalous})
        print(
            f"  {name:<14}{len(group) - len(anomalous):>8}{len(anomalous):>11}"
            f"{sum(s.mask_path is not None for s in group):>7}  {', '.join(defects)}"
        )
    return 0


def cmd_k_shot(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.data import load_samples, sample_k_shot, write_jsonl

    samples = load_samples(
        args.dataset,
        args.data_root,
        split=args.split,
        meta=args.meta,
        classes=args.classes,
        allow_missing_masks=args.allow_missing_masks,
    )
    chosen = sample_k_shot(samples, args.shot, args.seed)
    out = args.out or Path(f"{args.dataset}_{args.shot}shot_seed{args.seed}.jsonl")
    write_jsonl(chosen, out, root=args.data_root)
    print(f"{len(chosen)} images ({args.shot} per class, seed {args.seed}) written to {out}; use it with --meta {out}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    import torch

    from crossgraft.anomaly.backbone import load_clip

    backbone = load_clip(
        args.clip, image_size=_img_size(args), gelu=args.gelu, tokenizer=args.tokenizer, device=_device(args.device)
    )
    images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size, device=backbone.device)
    features = backbone.encode_image(images)
    vv = backbone.encode_image_vv(images, surgery_from=backbone.levels[0])
    text = backbone.encode_text(["a photo of a damaged object.", "object"])
    print(
        f"CLIP {args.clip}: vision {backbone.num_vision_layers} blocks x {backbone.vision_width}, text "
        f"{backbone.num_text_layers} blocks x {backbone.text_width}, embedding {backbone.embed_dim}"
    )
    print(
        f"input {backbone.image_size} px, patch {backbone.patch_size}, grid {backbone.grid_size}x{backbone.grid_size}"
        f" (trained at {backbone.clip.config.vision_config.image_size} px), gelu {backbone.gelu}"
    )
    for level, plain, surgery in zip(backbone.levels, features.level_tokens, vv.level_tokens):
        print(
            f"  level {level:>2}: tokens {tuple(plain.shape)}; mean token norm plain {plain.norm(dim=-1).mean():.3f}"
            f", V-V {surgery.norm(dim=-1).mean():.3f}"
        )
    print(f"image embedding {tuple(features.image_embed.shape)}, text embedding {tuple(text.shape)}")
    print(f"trainable CLIP parameters: {sum(p.numel() for p in backbone.parameters() if p.requires_grad)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.data.synthetic import SyntheticConfig
    from crossgraft.anomaly.demo import run_demo

    config = SyntheticConfig(args.classes, args.train_per_class, args.test_per_class, args.size, args.seed)
    run_demo(
        args.out,
        config,
        clip=args.clip,
        device=_device(args.device),
        text_epoch=args.text_epoch,
        image_epoch=args.image_epoch,
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.model import AdapterConfig
    from crossgraft.anomaly.train import PRESETS, QuirkConfig, TrainConfig, train, validate_config

    preset = PRESETS[args.preset]
    quirks = QuirkConfig(
        vv_mode=args.vv_attention or preset.vv_mode,
        stage1_last_level_only=(args.stage1_levels or ("last" if preset.stage1_last_level_only else "all")) == "last",
        stage1_image_loss=(args.stage1_image_loss or ("on" if preset.stage1_image_loss else "off")) == "on",
        gelu=args.gelu or preset.gelu,
    )
    full_shot = args.full_shot or args.training_mode == "full_shot" or args.shot == 0
    config = TrainConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        save_path=args.save_path,
        meta=args.meta,
        classes=args.classes,
        shot=None if full_shot else args.shot,
        clip=args.clip,
        tokenizer=args.tokenizer,
        img_size=_img_size(args),
        text_epoch=args.text_epoch,
        image_epoch=args.image_epoch,
        text_lr=args.text_lr,
        image_lr=args.image_lr,
        text_batch_size=args.text_batch_size,
        image_batch_size=args.image_batch_size,
        text_norm_weight=args.text_norm_weight,
        surgery_until_layer=args.surgery_until_layer,
        milestones=tuple(args.milestones),
        seed=args.seed,
        adapter=AdapterConfig(
            args.text_adapt_weight, args.image_adapt_weight, args.text_adapt_until, args.image_adapt_until, args.relu
        ),
        quirks=quirks,
        preset=args.preset,
        class_descriptions=args.class_descriptions,
        resume=args.resume,
        num_workers=args.num_workers,
        device=_device(args.device),
        mixed_precision=args.mixed_precision,
        allow_missing_masks=args.allow_missing_masks,
    )
    validate_config(config)
    train(config)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.evaluate import EvalConfig, evaluate

    evaluate(
        EvalConfig(
            dataset=args.dataset,
            data_root=args.data_root,
            save_path=args.save_path,
            epoch=args.epoch,
            meta=args.meta,
            classes=args.classes,
            batch_size=args.batch_size,
            visualize=args.visualize,
            pro_compat=args.pro_compat,
            allow_missing_masks=args.allow_missing_masks,
            class_descriptions=args.class_descriptions,
            out=args.out,
            device=_device(args.device),
            num_workers=args.num_workers,
        )
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.predict import predict

    out = args.out or Path(args.save_path) / "predictions"
    predictions = predict(
        args.inputs,
        args.save_path,
        args.class_name,
        out,
        epoch=args.epoch,
        threshold=args.threshold,
        fit_on=args.fit_on,
        domain=args.domain,
        batch_size=args.batch_size,
        device=_device(args.device),
    )
    for p in predictions:
        flag = "" if p.anomalous is None else ("  ANOMALOUS" if p.anomalous else "  normal")
        print(f"{p.image_score:10.3f}  det {p.det_score:.3f}{flag}  {p.image}")
    print(f"heat maps and one json per image in {out}; summary {Path(out) / 'predictions.json'}")
    return 0


def add_synthetic_args(
    parser: argparse.ArgumentParser, classes: int = 6, train_per_class: int = 10, test_per_class: int = 12
) -> None:
    parser.add_argument("--classes", type=int, default=classes, help="number of object/texture classes")
    parser.add_argument("--train_per_class", type=int, default=train_per_class, help="normal training images per class")
    parser.add_argument(
        "--test_per_class",
        type=int,
        default=test_per_class,
        help="test images per class: half normal, the rest spread over scratch/spot/missing",
    )
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
        "anomaly",
        help="anomaly-aware CLIP (AA-CLIP and its cross-attention variants)",
        description="Zero-/few-shot anomaly detection and segmentation with adapted CLIP.",
        formatter_class=HelpFormatter,
    )
    commands = anomaly.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="the built-in default run: synthetic data, tiny CLIP, AA-CLIP trained and tested",
        description="Write the synthetic dataset, train the AA-CLIP base model on half its classes (short "
        "schedule, reference preset), test zero-shot on the other half and on the training classes next to the "
        "untrained model, print the tables, write heat maps.",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (data, results, heat maps, log)")
    demo.add_argument("--clip", default="tiny", help="CLIP weights (see `crossgraft anomaly features --help`)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    demo.add_argument("--text_epoch", type=int, default=2, help="stage-1 epochs (short schedule)")
    demo.add_argument("--image_epoch", type=int, default=8, help="stage-2 epochs (short schedule)")
    add_synthetic_args(demo, classes=8, train_per_class=2, test_per_class=16)
    demo.set_defaults(func=cmd_demo)

    train = commands.add_parser(
        "train",
        help="train the AA-CLIP base model: stage 1 (text adapters), then stage 2 (image adapters)",
        description="Two-stage AA-CLIP training with the public code's defaults. Trains on the dataset's test "
        "split (AA-CLIP's protocol: train on one dataset, test zero-shot on the others). Writes text_adapter.pth, "
        "image_adapter.pth and image_adapter_{epoch}.pth (the public code's format), train.log and run_config.json "
        "to --save_path. Runs data-parallel under `accelerate launch`.",
        formatter_class=HelpFormatter,
    )
    add_data_args(train, default_dataset="VisA", with_split=False)
    add_clip_args(train, with_gelu=False)
    group = train.add_argument_group("schedule")
    group.add_argument(
        "--save_path", type=Path, default=Path("ckpt/baseline"), help="run folder for checkpoints and logs"
    )
    group.add_argument("--shot", type=int, default=32, help="k-shot: k/2 normal + k/2 anomalous images per class")
    group.add_argument("--full_shot", action="store_true", help="train on every image (same as --shot 0)")
    group.add_argument(
        "--training_mode",
        choices=["few_shot", "full_shot"],
        default="few_shot",
        help="the public code's switch; full_shot = --full_shot",
    )
    group.add_argument("--text_epoch", type=int, default=5, help="stage-1 epochs")
    group.add_argument("--image_epoch", type=int, default=20, help="stage-2 epochs (the paper reports epoch 15)")
    group.add_argument("--text_lr", type=float, default=1e-5, help="stage-1 Adam learning rate (betas 0.5, 0.999)")
    group.add_argument("--image_lr", type=float, default=5e-4, help="stage-2 Adam learning rate (betas 0.5, 0.999)")
    group.add_argument("--text_batch_size", type=int, default=16, help="stage-1 batch size")
    group.add_argument("--image_batch_size", type=int, default=2, help="stage-2 batch size")
    group.add_argument(
        "--milestones",
        type=int,
        nargs="+",
        default=[16000, 32000],
        help="stage-2 MultiStepLR milestones in iterations (gamma 0.5)",
    )
    group.add_argument("--seed", type=int, default=111, help="seed of the k-shot draw, shuffling and augmentation")
    group.add_argument(
        "--resume", action="store_true", help="continue the run in --save_path from its last checkpoints (same flags)"
    )
    group.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes")
    group.add_argument(
        "--mixed_precision",
        choices=["no", "bf16", "fp16"],
        default="no",
        help="autocast precision on GPU (the frozen CLIP stays in its own dtype)",
    )
    group = train.add_argument_group("model (the public train.py flags)")
    group.add_argument("--text_adapt_weight", type=float, default=0.1, help="λ of the text adapters' residual mix")
    group.add_argument("--image_adapt_weight", type=float, default=0.1, help="λ of the image adapters' residual mix")
    group.add_argument("--text_adapt_until", type=int, default=3, help="text adapters after text blocks 1..K")
    group.add_argument("--image_adapt_until", type=int, default=6, help="image adapters after vision blocks 1..K")
    group.add_argument("--text_norm_weight", type=float, default=0.1, help="weight of the anchors' orthogonality loss")
    group.add_argument("--relu", action="store_true", help="LeakyReLU after seg_proj and det_proj")
    group.add_argument(
        "--surgery_until_layer",
        type=int,
        default=None,
        help="V-V attention in the last K-1 vision blocks (public default 20 = blocks 6..24 of "
        "ViT-L); default: from the first feature level on",
    )
    group.add_argument(
        "--class_descriptions",
        type=Path,
        default=None,
        help="json {class_name: description} used in the prompts instead of the class name",
    )
    group = train.add_argument_group("fidelity: the public code's quirks (DESIGN §3)")
    group.add_argument(
        "--preset",
        choices=["reference", "fixed"],
        default="reference",
        help="reference: every quirk on (reproduces the public code); fixed: every quirk off",
    )
    group.add_argument(
        "--vv_attention",
        choices=["batch", "tokens"],
        default=None,
        help="quirk 1: V-V attention across the batch axis (reference) or over tokens (fixed)",
    )
    group.add_argument(
        "--stage1_levels",
        choices=["last", "all"],
        default=None,
        help="quirk 2: stage-1 loss from the last level only (reference) or summed over levels",
    )
    group.add_argument(
        "--stage1_image_loss",
        choices=["on", "off"],
        default=None,
        help="quirk 3: image-level loss in stage 1 (off in reference, on in fixed)",
    )
    group.add_argument(
        "--gelu",
        choices=["exact", "quick"],
        default=None,
        help="quirk 4: exact GELU (reference) or CLIP's QuickGELU (fixed)",
    )
    train.set_defaults(func=cmd_train)

    test = commands.add_parser(
        "test",
        help="evaluate one checkpoint of a trained run on a dataset's test split",
        description="Reference test-time maps (per level, blurred at grid resolution, upsampled, summed) and "
        "scores (per-class min-max fusion; industrial vs medical), then image/pixel AUROC, AP, F1-max and "
        "AUPRO. Writes results.csv, results.json, test.log and with --visualize one heat-map panel per image.",
        formatter_class=HelpFormatter,
    )
    add_data_args(test, default_dataset="MVTec", with_split=False)
    test.add_argument("--save_path", type=Path, required=True, help="the training run folder")
    test.add_argument(
        "--epoch",
        type=int,
        default=None,
        help="evaluate image_adapter_{epoch}.pth (default: the latest image_adapter.pth)",
    )
    test.add_argument("--batch_size", type=int, default=8, help="images per forward pass")
    test.add_argument("--visualize", action="store_true", help="write image | mask | heat map | overlay panels")
    test.add_argument(
        "--pro_compat", action="store_true", help="also report the 200-threshold AUPRO of AnomalyCLIP papers"
    )
    test.add_argument("--class_descriptions", type=Path, default=None, help="override the run's class descriptions")
    test.add_argument(
        "--out", type=Path, default=None, help="results folder (default: SAVE_PATH/test_DATASET[_epochN])"
    )
    test.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    test.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes")
    test.set_defaults(func=cmd_test)

    predict = commands.add_parser(
        "predict",
        help="heat maps and anomaly scores for new images with a trained run",
        description="Writes IMAGE_heatmap.png (image | heat map | overlay) and IMAGE.json per image and a "
        "predictions.json summary. Image score = max of the level-mean anomaly map.",
        formatter_class=HelpFormatter,
    )
    predict.add_argument("inputs", type=Path, help="an image file or a folder of images")
    predict.add_argument("--save_path", type=Path, required=True, help="the training run folder")
    predict.add_argument("--class_name", default="object", help="what the images show (goes into the prompts)")
    predict.add_argument("--epoch", type=int, default=None, help="use image_adapter_{epoch}.pth (default: latest)")
    predict.add_argument("--threshold", type=float, default=None, help="image score above which an image is anomalous")
    predict.add_argument(
        "--fit_on", type=Path, default=None, help="folder of normal images: the threshold becomes their highest score"
    )
    predict.add_argument(
        "--domain",
        choices=["industrial", "medical"],
        default="industrial",
        help="blur kernel of the maps (7/σ1 industrial, 9/σ1.5 medical)",
    )
    predict.add_argument("--out", type=Path, default=None, help="output folder (default: SAVE_PATH/predictions)")
    predict.add_argument("--batch_size", type=int, default=8, help="images per forward pass")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.set_defaults(func=cmd_predict)

    synthetic = commands.add_parser(
        "make-synthetic",
        help="write a synthetic MVTec-layout dataset with drawn defects and exact masks",
        description="Procedural textures/objects (train/good, test/good, test/<defect>, "
        "ground_truth/<defect>/*_mask.png); defects: scratch, spot, missing.",
        formatter_class=HelpFormatter,
    )
    synthetic.add_argument("--out", type=Path, required=True, help="folder to write the dataset into")
    add_synthetic_args(synthetic)
    synthetic.set_defaults(func=cmd_make_synthetic)

    inspect = commands.add_parser(
        "inspect-data",
        help="read a dataset, check every file, print counts per class",
        description="Reads the split, checks that every image and mask exists, is readable and has matching size.",
        formatter_class=HelpFormatter,
    )
    add_data_args(inspect)
    inspect.set_defaults(func=cmd_inspect_data)

    kshot = commands.add_parser(
        "k-shot",
        help="draw a seeded k-shot subset (k/2 normal + k/2 anomalous per class) into a jsonl",
        description="The jsonl can be passed back with --meta so that a run can be repeated exactly.",
        formatter_class=HelpFormatter,
    )
    add_data_args(kshot)
    kshot.add_argument("--shot", type=int, required=True, help="images per class, even: half normal, half anomalous")
    kshot.add_argument("--seed", type=int, default=111, help="selection seed (per class: seed and class name)")
    kshot.add_argument(
        "--out", type=Path, default=None, help="jsonl to write (default: {dataset}_{shot}shot_seed{seed}.jsonl)"
    )
    kshot.set_defaults(func=cmd_k_shot)

    features = commands.add_parser(
        "features",
        help="load a CLIP backbone and print its token features at each level",
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
    from crossgraft.anomaly.train import TrainingError
    from crossgraft.graft import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        DataError,
        BackboneError,
        MetricsInputError,
        CheckpointError,
        TrainingError,
        FileNotFoundError,
        ValueError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
