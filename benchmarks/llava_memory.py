"""Training-state memory of lmms-lab/llava-onevision-qwen2-0.5b-ov per variant: full fine-tuning vs LoRA.

The models are built on the meta device from OneVision's published config (no weights, no download), so the
parameter counts are exact. What a run holds besides activations, as `crossgraft llava train` runs (weights in
fp32 with --bf16 autocast; AdamW): 4 bytes per parameter, plus 12 per trained one (its gradient and Adam's two
moments). Activations come on top: they grow with the spliced length (about 3,000 tokens for a 640×480 image
under anyres_max_9, 800 under pad; benchmarks/llava_anyres_bench.py) and shrink with --gradient_checkpointing.

    python benchmarks/llava_memory.py [--lora_r 64] [--xattn_every_n_layers 4]
"""

from __future__ import annotations

import argparse
import re

import torch
from llava_bench import QWEN2_05B
from torch import nn

from crossgraft.llava import MODEL_CLASSES
from crossgraft.llava.lora import lora_target_pattern
from crossgraft.llava.train import set_trainable_parts

ONEVISION_05B = dict(  # lmms-lab/llava-onevision-qwen2-0.5b-ov's config.json, the fields that size the model
    QWEN2_05B,
    num_hidden_layers=24,
    mm_vision_tower="google/siglip-so400m-patch14-384",
    mm_vision_select_layer=-2,
    image_aspect_ratio="anyres_max_9",
    image_grid_pinpoints="(1x1),...,(6x6)",
)
VARIANTS = {
    "base": ("llava_qwen", {}),
    "alternating": ("llava_qwen_with_alternating_attn", {}),
    "alternating_cross gated": ("llava_qwen_with_alternating_cross_attn", {"xattn_mode": "gated"}),
    "alternating_cross mask": ("llava_qwen_with_alternating_cross_attn", {"xattn_mode": "mask"}),
}
FULL_PARTS = ["mm_mlp_adapter", "mm_language_model"]  # OneVision's recipe minus the tower


def lora_parameters(model: nn.Module, r: int) -> int:
    pattern = re.compile(lora_target_pattern(model))
    return sum(
        r * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and pattern.fullmatch(name)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora_r", type=int, default=64, help="LoRA rank (LLaVA-NeXT's default)")
    parser.add_argument("--xattn_every_n_layers", type=int, default=4, help="gated blocks before every n-th layer")
    args = parser.parse_args()

    print(f"{'variant':<26}{'recipe':<8}{'parameters':>14}{'trained':>14}{'GiB':>8}")
    for variant, (model_type, extra) in VARIANTS.items():
        config_class = MODEL_CLASSES[model_type].config_class
        if "xattn_mode" in extra:
            extra = {**extra, "xattn_every_n_layers": args.xattn_every_n_layers}
        with torch.device("meta"):
            model = MODEL_CLASSES[model_type](config_class(**ONEVISION_05B, **extra))
        total = sum(p.numel() for p in model.parameters())
        counts = set_trainable_parts(model, FULL_PARTS)
        full = sum(trained for trained, _ in counts.values())
        language = counts["mm_language_model"][0]
        lora = full - language + lora_parameters(model, args.lora_r)
        for recipe, trained, extra_params in (("full", full, 0), ("LoRA", lora, lora - (full - language))):
            gib = (4 * (total + extra_params) + 12 * trained) / 2**30
            print(f"{variant:<26}{recipe:<8}{total + extra_params:>14,}{trained:>14,}{gib:>8.1f}")


if __name__ == "__main__":
    main()
