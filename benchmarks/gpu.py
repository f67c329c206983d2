"""One table of GPU numbers, written before a GPU was at hand: run it on one CUDA device (under 5 minutes).

Rows, every ratio measured in this run:
- anomaly test throughput (images/s) at 518 px, batch 32, fp32 and bf16 autocast: crossgraft's full test pass
  (adapted ViT-L/14-336 sizes, random weights, the reference maps) next to a bare CLIP vision forward of the
  same batch (its overhead ratio; target <= 1.05x);
- one stage-1 and one stage-2 training step (batch 2 at 518 px);
- the exported anomaly graph through ONNX Runtime's CUDA provider, when onnxruntime-gpu is installed;
- one LLaVA training step per variant at Qwen2-0.5B widths (4 layers, 4096 tokens: four 729-token images
  between text) with sdpa and with flex_attention (block masks from the modality segments). In --dry the flex rows
  time the forward pass only (FlexAttention has no backward on the CPU).

`--dry` runs the same code paths at tiny sizes on the CPU (the test suite does), so the script is known to work
before a device is. Without CUDA and without `--dry` it stops at once and says so.

    bash benchmarks/gpu.sh            # = python benchmarks/gpu.py, with a 5-minute limit
    python benchmarks/gpu.py --dry    # CPU, tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from llava_bench import QWEN2_05B
from train_bench import CLASS_TEXTS, build, stage1_step, stage2_step, test_batch

from crossgraft.anomaly.backbone import FrozenCLIP, build_tiny_clip
from crossgraft.anomaly.model import AdaptedCLIP
from crossgraft.llava import MODEL_CLASSES
from crossgraft.llava.configuration import IMAGE_TOKEN_INDEX

LLAVA_VARIANTS = (
    ("base", "llava_qwen", {}),
    ("alternating", "llava_qwen_with_alternating_attn", {}),
    ("alternating_cross gated", "llava_qwen_with_alternating_cross_attn", {"xattn_mode": "gated"}),
    ("alternating_cross mask", "llava_qwen_with_alternating_cross_attn", {"xattn_mode": "mask"}),
)


class Sizes:
    """Everything the rows need, full-size (CUDA) or tiny (--dry)."""

    def __init__(self, dry: bool) -> None:
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self.img_size = 64 if dry else 518
        self.test_batch = 2 if dry else 32
        self.repeats = 1 if dry else 5
        self.llava_layers = 2 if dry else 4
        self.image_tokens = 16 if dry else 729  # patches + newline per image
        self.tokens = 128 if dry else 4096
        self.language = (
            dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
            if dry
            else dict(QWEN2_05B)
        )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(step: Callable[[], object], repeats: int, device: str) -> float:
    """Median seconds of `repeats` runs after one warm-up."""
    step()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def anomaly_model(sizes: Sizes) -> AdaptedCLIP:
    if not sizes.dry:
        return build(sizes.img_size, sizes.device)
    clip, tokenizer = build_tiny_clip()  # the `tiny` preset
    backbone = FrozenCLIP(clip, tokenizer, image_size=sizes.img_size, gelu="exact")
    return AdaptedCLIP(backbone).to(sizes.device)


def anomaly_rows(sizes: Sizes) -> list[tuple[str, str]]:
    model = anomaly_model(sizes).eval()
    images = torch.randn(sizes.test_batch, 3, sizes.img_size, sizes.img_size, device=sizes.device)
    rows = []
    for precision in ("fp32", "bf16"):
        bf16 = precision == "bf16"

        def ours(bf16: bool = bf16, cache: dict = {}) -> None:  # noqa: B006 (the class text, kept across calls)
            with torch.no_grad(), torch.autocast(sizes.device, dtype=torch.bfloat16, enabled=bf16):
                test_batch(model, images, cache)

        def bare(bf16: bool = bf16) -> None:
            with torch.no_grad(), torch.autocast(sizes.device, dtype=torch.bfloat16, enabled=bf16):
                model.backbone.clip.vision_model(pixel_values=images, interpolate_pos_encoding=True)

        ours_s, bare_s = timed(ours, sizes.repeats, sizes.device), timed(bare, sizes.repeats, sizes.device)
        rows.append(
            (
                f"anomaly test {sizes.img_size} px {precision}, batch {sizes.test_batch}",
                f"{sizes.test_batch / ours_s:.1f} images/s; {ours_s / bare_s:.2f}x a bare vision forward",
            )
        )
    model.train()
    small = images[:2]
    masks = (torch.rand(2, sizes.img_size, sizes.img_size, device=sizes.device) > 0.95).float()
    labels = torch.ones(2, dtype=torch.long, device=sizes.device)
    with torch.no_grad():
        bare_s = timed(
            lambda: model.backbone.clip.vision_model(pixel_values=small, interpolate_pos_encoding=True),
            sizes.repeats,
            sizes.device,
        )
    for name, step in (
        ("stage-1 step", lambda: stage1_step(model, small, masks, naive=False)),
        ("stage-2 step", lambda: stage2_step(model, small, masks, labels)),
    ):
        seconds = timed(step, sizes.repeats, sizes.device)
        rows.append(
            (f"{name}, batch 2, {sizes.img_size} px", f"{seconds:.3f} s; {seconds / bare_s:.2f}x a bare forward")
        )
    rows.append(deploy_row(model.eval(), sizes))
    return rows


def deploy_row(model: AdaptedCLIP, sizes: Sizes) -> tuple[str, str]:
    """The exported graph on ONNX Runtime's CUDA provider (CPU provider in --dry), when onnxruntime is installed."""
    name = "deploy: onnxruntime " + ("CPU (dry)" if sizes.dry else "CUDA")
    try:
        import onnxruntime
    except ImportError:
        return name, "onnxruntime not installed (pip install 'crossgraft[deploy]'; onnxruntime-gpu for CUDA)"
    provider = "CPUExecutionProvider" if sizes.dry else "CUDAExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        return name, f"{provider} not available (install onnxruntime-gpu)"
    import numpy as np

    from crossgraft.anomaly.deploy.export import write_graph
    from crossgraft.anomaly.detector import AnomalyDetector

    graph = AnomalyDetector(model.cpu(), CLASS_TEXTS, True, "industrial").eval()
    with tempfile.TemporaryDirectory() as folder:
        graph_file = write_graph(graph, Path(folder), "onnx", "none")
        session = onnxruntime.InferenceSession(str(graph_file), providers=[provider])
        batch = min(sizes.test_batch, 8)
        images = np.random.default_rng(0).integers(0, 256, (batch, sizes.img_size, sizes.img_size, 3), np.uint8)
        feeds = {"images": images, "class_index": np.zeros(batch, np.int64)}
        seconds = timed(lambda: session.run(None, feeds), sizes.repeats, "cpu")
    model.to(sizes.device)
    return name, f"{batch / seconds:.1f} images/s (batch {batch}, fp32)"


def llava_batch(sizes: Sizes) -> dict[str, torch.Tensor]:
    """One sample of `tokens` spliced tokens: four images, each between text segments."""
    images = 4
    text = sizes.tokens - images * sizes.image_tokens
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, sizes.language["vocab_size"], (1, text + images), generator=generator)
    segment = text // (images + 1)
    for index in range(images):
        ids[0, (index + 1) * segment + index] = IMAGE_TOKEN_INDEX
    labels = ids.clamp(min=0)
    side = 56 if sizes.dry else 378
    pixels = torch.randn(images, 3, side, side, generator=generator)
    return {k: v.to(sizes.device) for k, v in dict(input_ids=ids, labels=labels, images=pixels).items()}


def llava_rows(sizes: Sizes) -> list[tuple[str, str]]:
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    tower.update(image_size=56, patch_size=14) if sizes.dry else tower.update(image_size=378, patch_size=14)
    batch = llava_batch(sizes)
    dtype = torch.float32 if sizes.dry else torch.bfloat16
    rows, base_step = [], {}
    for name, model_type, extra in LLAVA_VARIANTS:
        steps = []
        for attention in ("sdpa", "flex_attention"):
            config = MODEL_CLASSES[model_type].config_class(
                **sizes.language, num_hidden_layers=sizes.llava_layers, **extra,
                mm_vision_tower="gpu-bench-siglip", vision_config=tower,
            )  # fmt: skip
            config._attn_implementation = attention
            torch.manual_seed(0)
            model = MODEL_CLASSES[model_type](config).to(sizes.device, dtype).train()
            if sizes.dry and attention == "flex_attention":  # FlexAttention has no backward on the CPU
                with torch.no_grad():
                    seconds = timed(lambda model=model: model(**batch).loss, sizes.repeats, sizes.device)
            else:
                seconds = timed(lambda model=model: model(**batch).loss.backward(), sizes.repeats, sizes.device)
            base_step.setdefault(attention, seconds)  # the first variant is base
            steps.append(f"{attention} {seconds:.3f} s ({seconds / base_step[attention]:.2f}x base)")
            del model
        rows.append((f"llava {name}, {sizes.tokens} tokens", "; ".join(steps)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU: checks every code path")
    args = parser.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print(
            "gpu.py needs a CUDA device and torch.cuda.is_available() is False here. "
            "Run `python benchmarks/gpu.py --dry` to check the script on the CPU.",
            file=sys.stderr,
        )
        return 2
    sizes = Sizes(args.dry)
    started = time.perf_counter()
    device = "CPU (dry run, tiny sizes)" if args.dry else torch.cuda.get_device_name()
    rows = [("device", f"{device}; torch {torch.__version__}")]
    rows += anomaly_rows(sizes)
    rows += llava_rows(sizes)
    rows.append(("total time", f"{time.perf_counter() - started:.0f} s"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
