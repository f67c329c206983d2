"""`crossgraft anomaly COMMAND`: each command parses its config (`anomaly/config.py`, where every flag and its help
live) and calls one library function; this file only parses, calls and prints. The library loads inside each
command, so help and argument errors come before torch is imported."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from crossgraft.anomaly import config as cfg
from crossgraft.args import Command, ConfigArgumentParser, command_parser, dispatch, run_command


def cmd_demo(config: cfg.DemoConfig) -> int:
    from crossgraft.anomaly.demo import run_demo

    run_demo(config)
    return 0


def cmd_train(config: cfg.TrainConfig) -> int:
    from crossgraft.anomaly.train import train

    train(config)
    return 0


def cmd_test(config: cfg.EvalConfig) -> int:
    from crossgraft.anomaly.evaluate import evaluate

    evaluate(config)
    return 0


def cmd_predict(config: cfg.PredictConfig) -> int:
    from crossgraft.anomaly.predict import predict

    result = predict(config)
    print(f"model: {result.model}")
    print(f"{'image score':>11}  {'det score':>9}  {'verdict' if result.threshold is not None else ''}  image")
    for p in result.predictions:
        flag = "" if p.anomalous is None else ("ANOMALOUS" if p.anomalous else "normal   ")
        print(f"{p.image_score:11.3f}  {p.det_score:9.3f}  {flag}  {p.image}")
    if result.threshold is not None:
        print(f"threshold {result.threshold:.3f}{f' (fitted on {config.fit_on})' if config.fit_on else ''}")
    print(f"heat maps and one json per image in {config.out_dir}; summary {result.summary}")
    return 0


def cmd_export(config: cfg.ExportConfig) -> int:
    from crossgraft.anomaly.deploy.export import export  # the exporters load only when asked for
    from crossgraft.runlog import console_logging

    console_logging("crossgraft.anomaly.deploy.export")  # what it is doing, as it does it

    result = export(config)
    metadata = result.metadata
    print(f"exported {metadata.describe()}")
    print(
        f"  classes: {', '.join(metadata.classes)}; images: uint8 (B, {metadata.image_size}, {metadata.image_size}, 3)"
    )
    if metadata.thresholds:
        print("  thresholds: " + ", ".join(f"{name} {value:.4g}" for name, value in metadata.thresholds.items()))
    print(f"  check against PyTorch: largest relative difference {result.check_difference:.2e}")
    print(f"  {result.folder / metadata.graph}, {result.folder / 'metadata.json'} ({result.seconds:.0f} s)")
    engine = "openvino" if metadata.graph_format == "openvino" else "onnxruntime"
    print(f"run it: crossgraft anomaly predict IMAGES --model {result.folder} --engine {engine} --class_name NAME")
    return 0


def cmd_serve(config: cfg.ServeConfig) -> int:
    from crossgraft.anomaly.serve import serve  # gradio loads only when asked for

    serve(config)
    return 0


def cmd_grad_flow(config: cfg.GradFlowConfig) -> int:
    from crossgraft.anomaly.diagnostics import grad_flow

    for flow in grad_flow(config):
        print(flow.report() + "\n")
    return 0


def cmd_attention_maps(config: cfg.AttentionMapsConfig) -> int:
    from crossgraft.anomaly.diagnostics import write_attention_maps

    result = write_attention_maps(config)
    if result.missing_words:
        print(
            f"note: {', '.join(result.missing_words)} do not occur as whole tokens in the prompts of "
            f"{result.prompt_text!r}"
        )
    print(f"{len(result.written)} attention-map panels in {config.out_dir}")
    return 0


def cmd_compare(config: cfg.CompareConfig) -> int:
    from crossgraft.anomaly.compare import compare

    print(compare(config.runs, out=config.out, seed=config.seed))
    return 0


def cmd_plot_run(config: cfg.PlotRunConfig) -> int:
    from crossgraft.anomaly.plots import plot_run

    written = plot_run(config.run, config.out)
    print(
        f"training curves (loss per epoch and stage, average gradient norm per module group): {written[0]}, "
        f"{written[1]}"
    )
    return 0


def cmd_ablation_demo(config: cfg.AblationConfig) -> int:
    from crossgraft.anomaly.demo import run_ablation_demo

    run_ablation_demo(config)
    return 0


def cmd_make_synthetic(config: cfg.MakeSyntheticConfig) -> int:
    from crossgraft.anomaly.data.synthetic import make_synthetic_dataset

    counts = make_synthetic_dataset(config.out, config.synthetic)
    print(f"wrote a synthetic MVTec-layout dataset to {config.out}")
    for name, per_split in counts.items():
        print(f"  {name:<10} " + ", ".join(f"{key} {value}" for key, value in per_split.items()))
    return 0


def cmd_inspect_data(config: cfg.InspectConfig) -> int:
    from crossgraft.anomaly.catalog import get_spec
    from crossgraft.anomaly.data import load_data, summarize_samples

    samples = load_data(config.data, config.split)
    print(summarize_samples(samples, get_spec(config.data.dataset), config.split, config.data.root))
    return 0


def cmd_k_shot(config: cfg.KShotConfig) -> int:
    from crossgraft.anomaly.data import load_data, sample_k_shot, write_jsonl

    chosen = sample_k_shot(load_data(config.data, config.split), config.shot, config.seed)
    out = write_jsonl(chosen, config.jsonl, root=config.data.root)
    print(f"{len(chosen)} images ({config.shot} per class, seed {config.seed}) written to {out}")
    print(f"use it with --meta {out}")
    return 0


def cmd_descriptions(config: cfg.DescriptionsConfig) -> int:
    from crossgraft.anomaly.prompts import descriptions_for, load_class_descriptions
    from crossgraft.files import write_text_atomic

    table = load_class_descriptions(config.source)
    if config.dataset is not None:
        table = descriptions_for(table, config.dataset, str(config.source))
    write_text_atomic(config.out, json.dumps(table, indent=2, ensure_ascii=False) + "\n")
    count = sum(len(v) if isinstance(v, dict) else 1 for v in table.values())
    print(f"{count} class descriptions written to {config.out}; use it with --class_descriptions {config.out}")
    return 0


def cmd_features(config: cfg.FeaturesConfig) -> int:
    from crossgraft.anomaly.diagnostics import feature_report

    print(feature_report(config))
    return 0


COMMANDS = {
    "demo": Command(
        cfg.DemoConfig,
        cmd_demo,
        "the built-in default run: synthetic data, tiny CLIP, AA-CLIP trained and tested",
        "Write the synthetic dataset, train the AA-CLIP base model on half its classes (short schedule, reference "
        "preset), test zero-shot on the other half and on the training classes next to the untrained model, print "
        "the tables, write heat maps.",
    ),
    "train": Command(
        cfg.TrainConfig,
        cmd_train,
        "train AA-CLIP (or a cross-attention variant): stage 1 (text adapters), then stage 2 (image adapters)",
        "Two-stage AA-CLIP training with the public code's defaults. Trains on the dataset's test split (AA-CLIP's "
        "protocol: train on one dataset, test zero-shot on the others). Writes text_adapter.pth, image_adapter.pth "
        "and image_adapter_{epoch}.pth (the public code's format; *_cross_attn*.pth for the variants), train.log and "
        "run_config.json to --save_path. `--config run_config.json` repeats a run. Runs data-parallel under "
        "`accelerate launch` or `torchrun`.",
    ),
    "test": Command(
        cfg.EvalConfig,
        cmd_test,
        "evaluate one checkpoint of a trained run on a dataset's test split",
        "Reference test-time maps (per level, blurred at grid resolution, upsampled, summed) and scores (per-class "
        "min-max fusion; industrial vs medical), then image/pixel AUROC, AP, F1-max and AUPRO. Writes results.csv, "
        "results.json, test.log, plots/ (ROC, PR and PRO curves per class and their mean, a bar chart per class; "
        "PNG and SVG) and with --visualize a labelled panel per image and a contact sheet per class.",
    ),
    "predict": Command(
        cfg.PredictConfig,
        cmd_predict,
        "heat maps and anomaly scores for new images with a trained run",
        "Writes IMAGE_heatmap.png (image | ground-truth tile | heat map | overlay, with score, verdict and colour "
        "scale) and IMAGE.json per image, mirroring the input tree, "
        "and a predictions.json summary. Image score = max of the level-mean anomaly map.",
    ),
    "export": Command(
        cfg.ExportConfig,
        cmd_export,
        "export a trained run as one ONNX graph or OpenVINO IR (uint8 images in, anomaly map and scores out)",
        "Traces the test-time model (adapted ViT, the stored text side of each --class_name, the reference map "
        "formula) into DIR/model.onnx (+ .data) or DIR/model.xml (+ .bin) with a dynamic batch axis, and writes "
        "DIR/metadata.json (classes, image size, normalisation, thresholds fitted with --fit_on, crossgraft version, "
        "the run's config). The new graph is checked against PyTorch before it replaces an earlier export. Needs "
        "pip install 'crossgraft[deploy]'.",
    ),
    "serve": Command(
        cfg.ServeConfig,
        cmd_serve,
        "a web page that runs a trained run (any class name) or an export on uploaded images",
        "A gradio app on HOST:PORT: upload images (or pick an example), choose a trained class or type any class "
        "name (zero-shot, with a training run), set the threshold; shows the heat-map overlay, the image score and "
        "the verdict per image. Needs pip install 'crossgraft[serve]'.",
    ),
    "grad-flow": Command(
        cfg.GradFlowConfig,
        cmd_grad_flow,
        "seed 001's gradient test: image-adapter gradient norm with vs without cross-attention",
        "On one batch of anomalous images: the image adapters' gradient norm without image cross-attention and "
        "with it, their ratio, [OK] at >= 0.8 else [CAUTION]; once with the output norm-matched to the tokens (the "
        "fix) and once without.",
    ),
    "attention-maps": Command(
        cfg.AttentionMapsConfig,
        cmd_attention_maps,
        "text->patch attention of chosen prompt words, as heat maps over the images",
        "For a run with text cross-attention: how much each chosen word of the class's 16 prompts attends to each "
        "image patch (mean over heads and occurrences), written as panels (image | ground-truth tile | map | overlay, "
        "titled with the word and the layer), mirroring the input tree.",
    ),
    "compare": Command(
        cfg.CompareConfig,
        cmd_compare,
        "per-class and mean metric deltas between runs tested on the same data",
        "Several results separated by commas are seeds of one configuration (mean ± std, paired bootstrap 95% "
        "interval of the mean difference). The first run is the reference. With --out, also a forest plot and "
        "per-class difference maps (PNG and SVG).",
    ),
    "plot-run": Command(
        cfg.PlotRunConfig,
        cmd_plot_run,
        "training curves of a run: loss per epoch and stage, average gradient norm per module group",
        "Reads the run's train.log (train_cross_attention.log for the variants; feedback rounds apart) and writes "
        "RUN/plots/training.png and .svg.",
    ),
    "ablation-demo": Command(
        cfg.AblationConfig,
        cmd_ablation_demo,
        "base vs cross_attn (initialised from base) on synthetic data, compared",
        "Trains the base model and the cross_attn variant (loaded from the base run, same seed and epochs) for "
        "each seed, tests both zero-shot on held-out synthetic classes and prints the comparison.",
    ),
    "make-synthetic": Command(
        cfg.MakeSyntheticConfig,
        cmd_make_synthetic,
        "write a synthetic MVTec-layout dataset with drawn defects and exact masks",
        "Procedural textures/objects (train/good, test/good, test/<defect>, ground_truth/<defect>/*_mask.png); "
        "defects: scratch, spot, missing.",
    ),
    "inspect-data": Command(
        cfg.InspectConfig,
        cmd_inspect_data,
        "read a dataset, check every file, print counts per class",
        "Reads the split, checks that every image and mask exists, is readable and has matching size.",
    ),
    "k-shot": Command(
        cfg.KShotConfig,
        cmd_k_shot,
        "draw a seeded k-shot subset (k/2 normal + k/2 anomalous per class) into a jsonl",
        "The jsonl can be passed back with --meta so that a run can be repeated exactly.",
    ),
    "descriptions": Command(
        cfg.DescriptionsConfig,
        cmd_descriptions,
        "write the public code's per-class descriptions (or any description file) as an editable json",
        "Reads the REAL_NAMES table of the public AA-CLIP checkout's dataset/constants.py as data (the file is "
        "parsed, never run) and writes it as the json that --class_descriptions reads: one dataset's {class: "
        "description} with --dataset, else {dataset: {class: description}}.",
    ),
    "features": Command(
        cfg.FeaturesConfig,
        cmd_features,
        "load a CLIP backbone and print its token features at each level",
        "Loads the frozen backbone, runs random images through the plain and V-V paths and prints shapes and "
        "norms: a quick check that weights, tokenizer and image size fit together.",
    ),
}

SUMMARY = (
    "Zero-/few-shot anomaly detection and segmentation with adapted CLIP (AA-CLIP and its cross-attention variants)."
)


def build_parser(command: str, prog: str | None = None, **defaults: Any) -> ConfigArgumentParser:
    """The parser of one anomaly command."""
    return command_parser("anomaly", command, COMMANDS[command], prog, **defaults)


def run(command: str, argv: Sequence[str], prog: str | None = None, **defaults: Any) -> int:
    """Run one anomaly command (the seeds' console scripts come through here with their own names and defaults)."""
    return run_command("anomaly", command, COMMANDS[command], argv, prog, **defaults)


def main(argv: Sequence[str]) -> int:
    return dispatch("anomaly", SUMMARY, COMMANDS, argv)
