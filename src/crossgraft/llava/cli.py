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


def main(argv: list[str]) -> int:
    from crossgraft.llava.train import main as train_main

    commands = {
        "train": lambda rest: train_main(rest, prog="crossgraft llava train"),
        "make-sample": make_sample_main,
        "make-tiny": make_tiny_main,
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
