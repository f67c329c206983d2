"""The `crossgraft` command: `crossgraft anomaly …` (AA-CLIP family)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_IMG_SIZE = 518  # AA-CLIP's run size for ViT-L/14 (37 x 37 patches)
PAPER_CLIP = "openai/clip-vit-large-patch14-336"


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
    group.add_argument(
        "--data_root",
        type=Path,
        default=None,
        help="folder that holds the dataset (default: the public code's data/ layout, e.g. "
        "data/mvtec_ad, data/VisA_20220922)",
    )
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
        default=PAPER_CLIP,
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
    from crossgraft.anomaly.model import AdapterConfig, CrossAttentionConfig
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
    config.cross = CrossAttentionConfig(
        variant=args.variant,
        text_weight=args.text_cross_attn_weight,
        image_weight=args.image_cross_attn_weight,
        learnable_weight=args.learnable_cross_attn_weight,
        heads=args.cross_attn_heads,
        dropout=args.cross_attn_dropout,
        image_norm_match=not args.no_image_norm_match,
    )
    config.load_base_text_adapter = args.load_base_text_adapter
    config.load_base_image_adapter = args.load_base_image_adapter
    config.num_feedback_loops = args.num_feedback_loops
    config.eval_each_loop = args.eval_each_loop
    config.eval_dataset, config.eval_data_root, config.eval_classes = (
        args.eval_dataset,
        args.eval_data_root,
        args.eval_classes,
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


def cmd_grad_flow(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from crossgraft.anomaly.backbone import load_clip
    from crossgraft.anomaly.data import AnomalyDataset, EvalTransform, load_samples
    from crossgraft.anomaly.diagnostics import gradient_flow
    from crossgraft.anomaly.infer import load_trained
    from crossgraft.anomaly.model import AdaptedCLIP, CrossAttentionConfig
    from crossgraft.anomaly.prompts import class_text

    device = _device(args.device)
    if args.save_path:
        model, _, _ = load_trained(args.save_path, args.epoch, device=device)
    else:
        torch.manual_seed(args.seed)
        backbone = load_clip(args.clip, image_size=_img_size(args), tokenizer=args.tokenizer, device=device)
        model = AdaptedCLIP(
            backbone, cross=CrossAttentionConfig(variant="image_cross_attn", image_weight=args.image_cross_attn_weight)
        ).to(device)
    samples = [s for s in load_samples(args.dataset, args.data_root, classes=args.classes) if s.label == 1]
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        AnomalyDataset(samples, EvalTransform(model.backbone.image_size)),
        batch_size=args.batch_size,
        shuffle=True,
        generator=generator,
    )
    batch = next(iter(loader))
    images, masks, labels = (batch[k].to(device) for k in ("image", "mask", "label"))
    texts = [class_text(name) for name in batch["class_name"]]
    for norm_match in (True, False):
        flow = gradient_flow(model, images, masks, labels, texts, norm_match=norm_match, seed=args.seed)
        print(flow.report() + "\n")
    return 0


def cmd_attention_maps(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.data import AnomalyDataset, EvalTransform
    from crossgraft.anomaly.data.formats import output_stem, read_folder
    from crossgraft.anomaly.diagnostics import save_attention_maps, text_to_patch_attention
    from crossgraft.anomaly.infer import load_trained
    from crossgraft.anomaly.prompts import class_text, load_class_descriptions

    model, run, _ = load_trained(args.save_path, args.epoch, device=_device(args.device))
    text = class_text(args.class_name, load_class_descriptions(run.get("class_descriptions")))
    samples = read_folder(args.inputs, args.class_name)
    dataset = AnomalyDataset(samples, EvalTransform(model.backbone.image_size))
    out = args.out or Path(args.save_path) / "attention_maps"
    written = []
    for index, sample in enumerate(samples):
        image = dataset[index]["image"][None].to(model.backbone.device)
        maps = text_to_patch_attention(model, image, text, args.words)
        missing = [w for w in args.words if w not in maps]
        if missing and index == 0:
            print(f"note: {', '.join(missing)} do not occur as whole tokens in the prompts of {text!r}")
        stem = out / output_stem(sample.image_path, args.inputs)
        written += save_attention_maps(maps, sample.image_path, stem, model.backbone.image_size)
    print(f"{len(written)} attention maps (image | text->patch attention | overlay) in {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.compare import compare

    print(compare(args.runs, out=args.out, seed=args.seed))
    return 0


def cmd_ablation_demo(args: argparse.Namespace) -> int:
    from crossgraft.anomaly.data.synthetic import SyntheticConfig
    from crossgraft.anomaly.demo import run_ablation_demo

    config = SyntheticConfig(args.classes, args.train_per_class, args.test_per_class, args.size, args.seed)
    run_ablation_demo(
        args.out,
        config,
        seeds=tuple(args.seeds),
        clip=args.clip,
        device=_device(args.device),
        text_epoch=args.text_epoch,
        image_epoch=args.image_epoch,
    )
    return 0


def add_cross_attention_args(parser: argparse.ArgumentParser, variant: str = "base", loops: int = 1) -> None:
    group = parser.add_argument_group("cross-attention variants and fair comparison (DESIGN §4, seeds 000-003)")
    group.add_argument(
        "--variant",
        choices=["base", "text_cross_attn", "image_cross_attn", "cross_attn"],
        default=variant,
        help="base = AA-CLIP; text_cross_attn: prompts attend to their image's "
        "features after text block 1; image_cross_attn: image tokens attend to their class's "
        "sentence embeddings after vision block --image_adapt_until; cross_attn: both",
    )
    group.add_argument("--text_cross_attn_weight", type=float, default=0.1, help="w_t in x + w_t * cross_attn(x)")
    group.add_argument(
        "--image_cross_attn_weight",
        type=float,
        default=0.1,
        help="w_i in x + w_i * cross_attn(x) (the output is first rescaled to the tokens' norm)",
    )
    group.add_argument("--learnable_cross_attn_weight", action="store_true", help="make w_t and w_i parameters")
    group.add_argument("--cross_attn_heads", type=int, default=8, help="attention heads of both modules")
    group.add_argument("--cross_attn_dropout", type=float, default=0.1, help="dropout on the attention weights")
    group.add_argument(
        "--no_image_norm_match",
        action="store_true",
        help="diagnostic: add the image cross-attention output without rescaling it to the tokens' "
        "norm (seed 001's state before its fix)",
    )
    group.add_argument(
        "--load_base_text_adapter",
        type=Path,
        default=None,
        help="start from a trained base model's text_adapter.pth (public code's or ours)",
    )
    group.add_argument(
        "--load_base_image_adapter",
        type=Path,
        default=None,
        help="start from a trained base model's image_adapter[_N].pth (public code's or ours)",
    )
    group.add_argument(
        "--num_feedback_loops",
        type=int,
        default=loops,
        help="rounds of stage 1 -> stage 2; later rounds take stage 1's visual features from the "
        "adapted image encoder of the previous round",
    )
    group.add_argument("--eval_each_loop", action="store_true", help="evaluate after every round (metrics in the log)")
    group.add_argument("--eval_dataset", default=None, help="dataset for --eval_each_loop (default: --dataset)")
    group.add_argument("--eval_data_root", type=Path, default=None, help="its root (default: --data_root)")
    group.add_argument("--eval_classes", nargs="+", default=None, help="its classes (default: all)")


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
    families.add_parser(
        "llava",
        help="LLaVA-OneVision with alternating attention (train, demo, make-sample, make-tiny); "
        "`crossgraft llava --help` lists its commands",
        add_help=False,
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
    add_cross_attention_args(train)
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

    flow = commands.add_parser(
        "grad-flow",
        help="seed 001's gradient test: image-adapter gradient norm with vs without cross-attention",
        description="On one batch of anomalous images: the image adapters' gradient norm without image "
        "cross-attention and with it, their ratio, [OK] at >= 0.8 else [CAUTION]; once with the output "
        "norm-matched to the tokens (the fix) and once without.",
        formatter_class=HelpFormatter,
    )
    add_data_args(flow, with_split=False)
    add_clip_args(flow, with_gelu=False)
    flow.add_argument(
        "--save_path",
        type=Path,
        default=None,
        help="a trained run to test (default: fresh adapters on --clip, random image cross-attention)",
    )
    flow.add_argument("--epoch", type=int, default=None, help="image checkpoint epoch of --save_path")
    flow.add_argument("--image_cross_attn_weight", type=float, default=0.1, help="w_i of a fresh model")
    flow.add_argument("--batch_size", type=int, default=2, help="images in the batch")
    flow.add_argument("--seed", type=int, default=0, help="picks the batch and the cross-attention init")
    flow.set_defaults(func=cmd_grad_flow)

    attention = commands.add_parser(
        "attention-maps",
        help="text->patch attention of chosen prompt words, as heat maps over the images",
        description="For a run with text cross-attention: how much each chosen word of the class's 16 prompts "
        "attends to each image patch (mean over heads and occurrences), written as image | map | overlay.",
        formatter_class=HelpFormatter,
    )
    attention.add_argument("inputs", type=Path, help="an image file or a folder of images")
    attention.add_argument("--save_path", type=Path, required=True, help="the training run folder")
    attention.add_argument("--class_name", default="object", help="what the images show (goes into the prompts)")
    attention.add_argument(
        "--words",
        nargs="+",
        default=["damaged", "broken", "flaw", "defect", "damage"],
        help="prompt words whose attention to draw",
    )
    attention.add_argument("--epoch", type=int, default=None, help="image checkpoint epoch (default: latest)")
    attention.add_argument("--out", type=Path, default=None, help="output folder (default: SAVE_PATH/attention_maps)")
    attention.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    attention.set_defaults(func=cmd_attention_maps)

    comparison = commands.add_parser(
        "compare",
        help="per-class and mean metric deltas between runs tested on the same data",
        description="RUN: a results.json or a folder holding one; several separated by commas are seeds of one "
        "configuration (mean ± std, paired bootstrap 95%% interval of the mean difference). The first RUN is "
        "the reference.",
        formatter_class=HelpFormatter,
    )
    comparison.add_argument(
        "runs", nargs="+", help="results of each run: [NAME=]PATH or [NAME=]PATH1,PATH2,... (seeds)"
    )
    comparison.add_argument("--out", type=Path, default=None, help="also write compare.txt and compare.json here")
    comparison.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    comparison.set_defaults(func=cmd_compare)

    ablation = commands.add_parser(
        "ablation-demo",
        help="base vs cross_attn (initialised from base) on synthetic data, compared",
        description="Trains the base model and the cross_attn variant (loaded from the base run, same seed and "
        "epochs) for each seed, tests both zero-shot on held-out synthetic classes and prints the comparison.",
        formatter_class=HelpFormatter,
    )
    ablation.add_argument("--out", type=Path, default=Path("runs/ablation"), help="run folder")
    ablation.add_argument("--clip", default="tiny", help="CLIP weights")
    ablation.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ablation.add_argument("--seeds", type=int, nargs="+", default=[111, 112], help="training seeds")
    ablation.add_argument("--text_epoch", type=int, default=2, help="stage-1 epochs of each run")
    ablation.add_argument("--image_epoch", type=int, default=8, help="stage-2 epochs of each run")
    add_synthetic_args(ablation, classes=8, train_per_class=2, test_per_class=16)
    ablation.set_defaults(func=cmd_ablation_demo)

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


def train_cross_attention(argv: list[str] | None = None) -> int:
    """`train_cross_attention`: seed 000's command line (cross_attn variant, one round)."""
    return main(["anomaly", "train", "--variant", "cross_attn", *(sys.argv[1:] if argv is None else argv)])


def train_cross_attention_feedback(argv: list[str] | None = None) -> int:
    """`train_cross_attention_feedback`: seed 001's command line (cross_attn variant, feedback rounds)."""
    args = sys.argv[1:] if argv is None else argv
    loops = [] if "--num_feedback_loops" in args else ["--num_feedback_loops", "3"]
    return main(["anomaly", "train", "--variant", "cross_attn", *loops, *args])


def main(argv: list[str] | None = None) -> int:
    from crossgraft.anomaly.backbone import BackboneError
    from crossgraft.anomaly.data.records import DataError
    from crossgraft.anomaly.metrics import MetricsInputError
    from crossgraft.anomaly.train import TrainingError
    from crossgraft.graft import CheckpointError

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "llava":
        from crossgraft.llava.cli import main as llava_main

        return llava_main(list(argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "dataset", None) is not None and hasattr(args, "data_root") and args.data_root is None:
            from crossgraft.anomaly.data.datasets import default_data_root

            args.data_root = default_data_root(args.dataset)
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
