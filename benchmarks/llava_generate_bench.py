"""Generation speed of each LLaVA variant: the KV cache against re-running the whole sequence at every step.

Language model at Qwen2-0.5B widths (llava_bench.py's) with --layers decoder layers; one sample holds a
question, one image of 729 tokens (27 x 27 patches + 1 newline) and generates --new_tokens tokens greedily
(no end token, so every row produces them all). The cached and uncached runs of a variant produce the same
tokens (checked here, and exactly tested in tests/llava/test_modeling.py); the ratio is measured in this run.

    python benchmarks/llava_generate_bench.py [--layers 4] [--new_tokens 64] [--variants base,alternating,...]
"""

from __future__ import annotations

import argparse
import time

import torch
from llava_bench import QWEN2_05B, TEXT_BEFORE, TOWER

from crossgraft.llava import MODEL_CLASSES
from crossgraft.llava.configuration import IMAGE_TOKEN_INDEX

VARIANTS = {
    "base": ("llava_qwen", {}),
    "alternating": ("llava_qwen_with_alternating_attn", {}),
    "cross_gated": ("llava_qwen_with_alternating_cross_attn", {"xattn_mode": "gated"}),
    "cross_mask": ("llava_qwen_with_alternating_cross_attn", {"xattn_mode": "mask"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (Qwen2-0.5B has 24)")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per run")
    parser.add_argument("--vocab_size", type=int, default=151936, help="Qwen2's")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, args.vocab_size, (1, TEXT_BEFORE + 1), generator=generator)
    input_ids[0, 1] = IMAGE_TOKEN_INDEX
    images = torch.randn(1, 3, 378, 378, generator=generator).to(args.device)
    input_ids = input_ids.to(args.device)
    language = dict(QWEN2_05B, num_hidden_layers=args.layers, vocab_size=args.vocab_size)

    print(f"device {args.device}, {args.layers} layers, 1 sample of {TEXT_BEFORE + 729} prompt tokens, "
          f"{args.new_tokens} new tokens")  # fmt: skip
    print(f"{'variant':14} {'cached tok/s':>13} {'uncached tok/s':>15} {'speed-up':>9}  same tokens")
    for name in args.variants.split(","):
        model_type, extra = VARIANTS[name]
        config_class = MODEL_CLASSES[model_type].config_class
        config = config_class(**language, **extra, mm_vision_tower="bench-siglip", vision_config=dict(TOWER))
        config._attn_implementation = "sdpa"
        model = MODEL_CLASSES[model_type](config).to(args.device).eval()
        model.generate(input_ids, None, images, max_new_tokens=2, eos_token_id=[])  # warm-up
        seconds, tokens = {}, {}
        for use_cache in (True, False):
            start = time.perf_counter()
            tokens[use_cache] = model.generate(
                input_ids, None, images, max_new_tokens=args.new_tokens, eos_token_id=[], use_cache=use_cache
            )
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[use_cache] = time.perf_counter() - start
        same = torch.equal(tokens[True], tokens[False])
        print(
            f"{name:14} {args.new_tokens / seconds[True]:13.1f} {args.new_tokens / seconds[False]:15.2f} "
            f"{seconds[False] / seconds[True]:8.1f}x  {'yes' if same else 'NO'}"
        )


if __name__ == "__main__":
    main()
