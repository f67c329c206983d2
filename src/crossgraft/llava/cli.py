"""`crossgraft llava …`: train (the seed's train_alternating), make-sample, make-tiny."""

from __future__ import annotations

import argparse
import sys

from crossgraft.llava.sample import TINY_TYPES

USAGE = """usage: crossgraft llava COMMAND [options]

LLaVA-OneVision (Qwen2 + SigLIP) with alternating attention.

commands:
  train         train base / alternating / alternating_cross (same flags as train_alternating; --help lists all)
  make-sample   write a tiny LAION-style image-caption set in LLaVA format (--out DIR)
  make-tiny     write a tiny random model and its tokenizer (--out DIR --model_type TYPE)
  demo          train base, alternating and both alternating_cross modes from one tiny backbone; compare them
"""


def make_sample_main(argv: list[str]) -> int:
    from crossgraft.llava.sample import make_sample

    parser = argparse.ArgumentParser(
        prog="crossgraft llava make-sample",
        description="Write generated images (coloured shapes) and their captions as LLaVA conversation records: "
        "OUT/images/*.png and OUT/sample.json.",
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--count", type=int, default=12, help="number of image-caption records")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same sample")
    args = parser.parse_args(argv)
    path = make_sample(args.out, args.count, args.seed)
    print(f"wrote {args.count} records to {path}")
    return 0


def make_tiny_main(argv: list[str]) -> int:
    from crossgraft.llava.sample import make_tiny_model

    parser = argparse.ArgumentParser(
        prog="crossgraft llava make-tiny",
        description="Write a tiny random checkpoint (config.json, model.safetensors, tokenizer) to try every "
        "command offline. 'qwen2' writes a bare language model, the backbone of --init_from_backbone.",
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--model_type", default="llava_qwen", choices=TINY_TYPES, help="which model")
    parser.add_argument("--seed", type=int, default=0, help="weights seed")
    args = parser.parse_args(argv)
    make_tiny_model(args.out, args.model_type, args.seed)
    print(f"wrote a tiny {args.model_type} model to {args.out}")
    return 0


def demo_main(argv: list[str]) -> int:
    from crossgraft.llava.demo import format_results, run_demo

    parser = argparse.ArgumentParser(
        prog="crossgraft llava demo",
        description="Write the tiny caption sample (75%% train / 25%% held out) and a tiny random LLaVA backbone, "
        "train the four variants from it with identical settings, and print the held-out caption loss before and "
        "after. Results: OUT/results.md and OUT/results.json; each run's log in its own folder.",
    )
    parser.add_argument("--out", default="runs/llava-demo", help="folder to write")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per variant")
    parser.add_argument("--count", type=int, default=48, help="records in the generated sample")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the backbone and training")
    args = parser.parse_args(argv)
    results = run_demo(args.out, args.steps, args.count, args.seed)
    print(format_results(results))
    print(f"written to {args.out}/results.md")
    return 0


def main(argv: list[str]) -> int:
    from crossgraft.llava.train import main as train_main

    commands = {
        "train": lambda rest: train_main(rest, prog="crossgraft llava train"),
        "make-sample": make_sample_main,
        "make-tiny": make_tiny_main,
        "demo": demo_main,
    }
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in commands:
        print(f"error: unknown llava command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


def train_alternating() -> int:
    """Console script `train_alternating` (seed 004's wrapper)."""
    from crossgraft.llava.train import main as train_main

    return train_main(None, prog="train_alternating")
