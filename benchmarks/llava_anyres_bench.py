"""pad vs anyres_max_9: spliced tokens per sample and one training step (forward + backward) of each variant.

The image (640×480 by default, random pixels) goes through crossgraft's ImageProcessor with OneVision's geometry
(384-px tiles, 14-px patches: 27 × 27 features per tile, image_grid_pinpoints (1x1)..(6x6)), so `pad` gives one tile
and anyres_max_9 the base tile plus its grid. Language model: Qwen2-0.5B widths with --layers decoder layers; the
tower: SigLIP-so400m widths with --tower_layers layers (26 run in OneVision), frozen as in OneVision's default
recipe. Ratios are anyres over pad of the same variant, measured in this run with the rows taking turns.

    python benchmarks/llava_anyres_bench.py [--width 640 --height 480] [--layers 4] [--tower_layers 4]
                                            [--variants base,alternating] [--repeats 3] [--vocab_size 151936]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from llava_bench import QWEN2_05B
from PIL import Image

from crossgraft.llava import MODEL_CLASSES
from crossgraft.llava.configuration import IMAGE_TOKEN_INDEX
from crossgraft.llava.processing import ImageProcessor

SO400M = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_attention_heads=16,
    image_size=384,
    patch_size=14,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
)
MODEL_TYPES = {
    "base": ("llava_qwen", {}),
    "alternating": ("llava_qwen_with_alternating_attn", {}),
    "cross_gated": ("llava_qwen_with_alternating_cross_attn", {"xattn_mode": "gated"}),
    "cross_mask": ("llava_qwen_with_alternating_cross_attn", {"xattn_mode": "mask"}),
}
QUESTION, ANSWER = 24, 48  # text tokens before and after the image


def build(variant: str, args: argparse.Namespace, aspect_ratio: str) -> torch.nn.Module:
    model_type, extra = MODEL_TYPES[variant]
    config_class = MODEL_CLASSES[model_type].config_class
    config = config_class(
        **{**QWEN2_05B, "vocab_size": args.vocab_size},
        **extra,
        num_hidden_layers=args.layers,
        mm_vision_tower="bench-siglip",
        vision_config=dict(SO400M, num_hidden_layers=args.tower_layers + 1),  # select layer -2 drops one
        image_aspect_ratio=aspect_ratio,
        image_grid_pinpoints="(1x1),...,(6x6)",
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = MODEL_CLASSES[model_type](config).train()
    model.model.vision_tower.requires_grad_(False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=640, help="image width")
    parser.add_argument("--height", type=int, default=480, help="image height")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (Qwen2-0.5B has 24)")
    parser.add_argument("--tower_layers", type=int, default=4, help="SigLIP layers that run (OneVision: 26)")
    parser.add_argument("--variants", default="base,alternating", help=f"comma-separated: {', '.join(MODEL_TYPES)}")
    parser.add_argument("--vocab_size", type=int, default=151936, help="Qwen2's; a smaller one shortens CPU runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8))
    input_ids = torch.randint(0, 1000, (1, QUESTION + 1 + ANSWER))
    input_ids[0, QUESTION] = IMAGE_TOKEN_INDEX
    labels = input_ids.clone()
    labels[0, : QUESTION + 1] = -100

    steps, tokens = {}, {}
    for variant in args.variants.split(","):
        for aspect_ratio in ("pad", "anyres_max_9"):
            model = build(variant, args, aspect_ratio)
            processed = ImageProcessor.from_config(model.config)(image)
            images, sizes = [processed.tiles], torch.tensor([processed.size])
            with torch.no_grad():
                spliced = model.model.prepare_multimodal_inputs(input_ids, None, None, images, image_sizes=sizes)
            name = f"{variant} {aspect_ratio}"
            tokens[name] = (len(processed.tiles), int(spliced.attention_mask.sum()))

            def step(model=model, images=images, sizes=sizes) -> None:
                model.zero_grad(set_to_none=True)
                model(input_ids=input_ids, labels=labels, images=images, image_sizes=sizes).loss.backward()

            steps[name] = step

    for step in steps.values():  # warm-up
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    print(
        f"{args.width}x{args.height} image; Qwen2-0.5B widths, {args.layers} layers; SigLIP-so400m widths, "
        f"{args.tower_layers} layers (frozen); vocab {args.vocab_size}; {torch.get_num_threads()} threads"
    )
    print(f"{'row':<26}{'tiles':>6}{'tokens':>8}{'s/step':>9}{'vs pad':>8}")
    for name in steps:
        seconds = statistics.median(times[name])
        pad = statistics.median(times[name.rsplit(" ", 1)[0] + " pad"])
        tiles, count = tokens[name]
        print(f"{name:<26}{tiles:>6}{count:>8}{seconds:>9.2f}{seconds / pad:>7.2f}x")


if __name__ == "__main__":
    main()
