"""One training step (forward + backward) of each LLaVA variant against plain Qwen2 on the same tokens.

Language model: Qwen2-0.5B widths (896 wide, 14 heads, 2 KV heads, MLP 4864) with --layers decoder layers
(24 in the real model; fewer by default so a CPU run takes a minute). Each sample holds one image of 729
tokens (27 x 27 patches + 1 newline, like SigLIP-so400m/14 at 378 px) between a short question and a caption.
The tower is a 1-layer, 64-wide SigLIP: its cost is not what this script measures.

Rows: plain Qwen2ForCausalLM on as many text tokens (sdpa, is_causal); llava_qwen
(our base: splicing + the same decoder); alternating; alternating_cross gated (every 4th layer) and mask.
Ratios are against the plain Qwen2 step and against our base step, measured in this run; the rows take
turns in every round, so drift of the machine hits all of them alike.

`--attention sdpa,flex_attention` adds each variant with flex_attention (block masks from the modality segments;
compiled on first use). FlexAttention has no backward pass on the CPU, so on the CPU `--forward_only` times the
forward pass alone.

    python benchmarks/llava_bench.py [--layers 4] [--batch 2] [--vocab_size 151936] [--repeats 3] [--device cpu]
                                     [--attention sdpa,flex_attention --forward_only]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from crossgraft.llava import MODEL_CLASSES
from crossgraft.llava.configuration import IMAGE_TOKEN_INDEX

QWEN2_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
)
TOWER = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=378, patch_size=14
)
TEXT_BEFORE, TEXT_AFTER = 24, 48  # question tokens before the image, caption tokens after it


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_round_robin(steps: dict, repeats: int, device: str) -> dict[str, tuple[float, float]]:
    """Median seconds per row, the rows taking turns in every round so that machine drift hits all of them
    alike; peak CUDA memory (GiB, 0 on CPU) from one extra step per row."""
    peaks = {}
    for name, step in steps.items():  # warm-up, and the memory peak of each row
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        step()
        sync(device)
        peaks[name] = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), peaks[name]) for name in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (Qwen2-0.5B has 24)")
    parser.add_argument("--batch", type=int, default=2, help="samples per step")
    parser.add_argument("--vocab_size", type=int, default=151936, help="Qwen2's; a smaller one shortens CPU runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attention", default="sdpa", help="comma-separated: sdpa, flex_attention, eager")
    parser.add_argument("--forward_only", action="store_true", help="time forward passes (no backward)")
    args = parser.parse_args()
    attentions = args.attention.split(",")
    if "flex_attention" in attentions and not args.device.startswith("cuda") and not args.forward_only:
        parser.error("FlexAttention has no backward pass on the CPU: add --forward_only")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, args.vocab_size, (args.batch, TEXT_BEFORE + 1 + TEXT_AFTER), generator=generator)
    input_ids[:, TEXT_BEFORE] = IMAGE_TOKEN_INDEX
    labels = input_ids.clamp(min=0)
    labels[:, : TEXT_BEFORE + 1] = -100
    images = torch.randn(args.batch, 3, 378, 378, generator=generator)
    batch = {k: v.to(args.device) for k, v in dict(input_ids=input_ids, labels=labels, images=images).items()}

    language = dict(QWEN2_05B, num_hidden_layers=args.layers, vocab_size=args.vocab_size)
    steps = {}
    qwen = Qwen2ForCausalLM(Qwen2Config(**language, attn_implementation="sdpa")).to(args.device, dtype)
    length = TEXT_BEFORE + 729 + TEXT_AFTER
    plain_ids = torch.randint(0, args.vocab_size, (args.batch, length), generator=generator).to(args.device)

    def run(model: torch.nn.Module, **inputs: torch.Tensor) -> None:
        if args.forward_only:
            with torch.no_grad():
                model(**inputs)
        else:
            model(**inputs).loss.backward()

    steps["plain Qwen2 (same tokens)"] = lambda: run(qwen, input_ids=plain_ids, labels=plain_ids)

    variants = (
        ("llava_qwen (base)", "llava_qwen", {}),
        ("alternating", "llava_qwen_with_alternating_attn", {}),
        ("alternating_cross gated", "llava_qwen_with_alternating_cross_attn", {"xattn_mode": "gated"}),
        ("alternating_cross mask", "llava_qwen_with_alternating_cross_attn", {"xattn_mode": "mask"}),
    )
    for attention in attentions:
        for name, model_type, extra in variants:
            config_class = MODEL_CLASSES[model_type].config_class
            config = config_class(**language, **extra, mm_vision_tower="bench-siglip", vision_config=dict(TOWER))
            config._attn_implementation = attention
            model = MODEL_CLASSES[model_type](config).to(args.device, dtype).train()
            label = name if attention == "sdpa" else f"{name} [{attention}]"
            steps[label] = lambda model=model: run(model, **batch)
    rows = time_round_robin(steps, args.repeats, args.device)

    base_row = "llava_qwen (base)" if "sdpa" in attentions else f"llava_qwen (base) [{attentions[0]}]"
    plain, base = rows["plain Qwen2 (same tokens)"][0], rows[base_row][0]
    what = "forward pass" if args.forward_only else "training step"
    print(f"device {args.device}, {args.dtype}, {args.layers} layers, batch {args.batch}, {length} tokens per sample")
    print(f"{'row (' + what + ')':44} {'time (s)':>9} {'vs plain':>9} {'vs base':>8} {'peak GiB':>9}")
    for name, (seconds, peak) in rows.items():
        print(f"{name:44} {seconds:9.3f} {seconds / plain:8.2f}x {seconds / base:7.2f}x {peak:9.2f}")


if __name__ == "__main__":
    main()
