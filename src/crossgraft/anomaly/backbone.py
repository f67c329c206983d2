"""Frozen CLIP backbone for the anomaly family (docs/aa-clip.md).

`FrozenCLIP` wraps a `transformers.CLIPModel` and runs its blocks itself, so that callers can take the
token sequence after any block, insert adapters between blocks, and switch a block's attention to the
V-V form of AA-CLIP's `clip_surgery` copy. Every CLIP weight is frozen and stays in eval mode.

Loaders: a Hugging Face id or directory, an OpenAI-format checkpoint file (TorchScript archive or plain
state dict with OpenAI/open_clip key names), or the `tiny` preset (random weights, offline tokenizer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig
from transformers.activations import ACT2FN
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

from crossgraft.anomaly.config import BackboneConfig, GeluKind, VVMode
from crossgraft.anomaly.tiny_tokenizer import build_tiny_tokenizer
from crossgraft.devices import resolve_device
from crossgraft.errors import CrossgraftError
from crossgraft.torchscript import TorchScriptError, is_torchscript_archive, read_torchscript_state_dict

GELU_ACTIVATIONS = {"quick": "quick_gelu", "exact": "gelu"}
OPENAI_CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin"}
# The tokenizer is the same BPE for every OpenAI CLIP; used when a .pt file comes without --tokenizer.
DEFAULT_TOKENIZER = "openai/clip-vit-large-patch14-336"
TINY_SEED = 0  # the tiny preset's weights must be identical in every process (train, test, predict)


class BackboneError(CrossgraftError, ValueError):
    """A CLIP backbone could not be built from what the user gave."""


@dataclass
class VisionFeatures:
    """What one image-encoder pass returns."""

    level_tokens: list[torch.Tensor]  # one (B, 1+N, W) tensor per requested level, CLS first
    image_embed: torch.Tensor  # (B, E): post-LN CLS of the plain path, projected


def default_levels(num_layers: int) -> list[int]:
    """Four evenly spaced 1-based blocks ending at the last one: 6, 12, 18, 24 for a 24-block ViT."""
    return sorted({max(1, round(num_layers * k / 4)) for k in range(1, 5)})


def interpolate_position_embedding(position_embedding: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Resize a (1+G*G, W) CLIP position table to a grid_size x grid_size patch grid.

    Bicubic with antialias from the trained grid; the CLS row is kept. When the grid is unchanged the table is
    returned exactly as trained.
    """
    num_patches = position_embedding.shape[0] - 1
    trained_grid = math.isqrt(num_patches)
    if trained_grid * trained_grid != num_patches:
        raise BackboneError(f"position embedding has {num_patches} patch rows, which is not a square grid")
    if trained_grid == grid_size:
        return position_embedding.clone()
    cls_row, patch_rows = position_embedding[:1], position_embedding[1:]
    width = position_embedding.shape[1]
    grid = patch_rows.float().reshape(1, trained_grid, trained_grid, width).permute(0, 3, 1, 2)  # (1, W, G, G)
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False, antialias=True)
    patch_rows = grid.permute(0, 2, 3, 1).reshape(grid_size * grid_size, width).to(position_embedding.dtype)
    return torch.cat([cls_row, patch_rows], dim=0)


def _int(value: object, what: str) -> int:
    """A CLIP config's size that must be one int (images and patches are square)."""
    if isinstance(value, int):
        return value
    raise BackboneError(f"the CLIP config's {what} must be one number, got {value!r}")


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, num_heads, width // num_heads).transpose(1, 2)  # (B, H, L, d)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)  # (B, L, W)


class FrozenCLIP(nn.Module):
    """A frozen CLIP whose blocks can be run one at a time.

    Block indices in the public methods are 0-based (`vision_block(i, x)` runs block i+1 of the paper's
    1-based numbering); `levels` and `surgery_from` are 1-based, as in the public AA-CLIP flags.
    """

    image_position_embedding: torch.Tensor  # (1+N, W): a buffer, positions interpolated to the run's grid

    def __init__(
        self,
        clip: CLIPModel,
        tokenizer: CLIPTokenizer,
        *,
        image_size: int | None = None,
        levels: list[int] | None = None,
        gelu: GeluKind = "quick",
    ) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        vision_config = self.vision_config
        text_config = self.text_config
        self.vision_width = vision_config.hidden_size
        self.text_width = text_config.hidden_size
        self.embed_dim = _int(clip.config.projection_dim, "projection width")
        self.patch_size = _int(vision_config.patch_size, "patch size")  # CLIP's patches are square
        self.num_vision_layers = vision_config.num_hidden_layers
        self.num_text_layers = text_config.num_hidden_layers
        self.vision_heads = vision_config.num_attention_heads
        self.text_heads = text_config.num_attention_heads
        self.context_length = text_config.max_position_embeddings

        self.image_size = image_size or _int(vision_config.image_size, "image size")
        if self.image_size % self.patch_size:
            raise BackboneError(
                f"image size {self.image_size} is not a multiple of the patch size {self.patch_size}; "
                f"use e.g. {self.image_size // self.patch_size * self.patch_size}"
            )
        self.grid_size = self.image_size // self.patch_size
        self.levels = sorted(set(levels)) if levels else default_levels(self.num_vision_layers)
        bad = [level for level in self.levels if not 1 <= level <= self.num_vision_layers]
        if bad:
            raise BackboneError(f"levels {bad} outside 1..{self.num_vision_layers} (the ViT's block count)")

        trained_table = clip.vision_model.embeddings.position_embedding.weight.detach()
        self.register_buffer(
            "image_position_embedding",
            interpolate_position_embedding(trained_table, self.grid_size),  # (1+N, W)
            persistent=False,
        )
        self.set_gelu(gelu)
        self.eot_token_id = tokenizer.eos_token_id
        self.requires_grad_(False)
        self.eval()

    # ----------------------------------------------------------------------------------------- setup
    def set_gelu(self, gelu: GeluKind) -> None:
        """QuickGELU is CLIP's own activation; the public AA-CLIP code runs exact GELU (quirk 4)."""
        if gelu not in GELU_ACTIVATIONS:
            raise BackboneError(f"gelu must be one of {sorted(GELU_ACTIVATIONS)}, got {gelu!r}")
        activation = GELU_ACTIVATIONS[gelu]
        for layer in [*self.vision_layers, *self.text_layers]:
            layer.mlp.activation_fn = ACT2FN[activation]
        self.vision_config.hidden_act = activation
        self.text_config.hidden_act = activation
        self.gelu = gelu

    def train(self, mode: bool = True) -> FrozenCLIP:
        """Stays in eval mode whatever `mode` says: frozen means frozen, so dropout and the like stay off even when
        a parent module trains."""
        return super().train(False)

    @property
    def vision_config(self) -> CLIPVisionConfig:
        return cast(CLIPVisionConfig, self.clip.config.vision_config)

    @property
    def text_config(self) -> CLIPTextConfig:
        return cast(CLIPTextConfig, self.clip.config.text_config)

    @property
    def vision_layers(self) -> list[CLIPEncoderLayer]:
        return cast(list[CLIPEncoderLayer], list(self.clip.vision_model.encoder.layers))

    @property
    def text_layers(self) -> list[CLIPEncoderLayer]:
        return cast(list[CLIPEncoderLayer], list(self.clip.text_model.encoder.layers))

    @property
    def ln_post(self) -> nn.LayerNorm:
        return self.clip.vision_model.post_layernorm

    @property
    def visual_projection(self) -> nn.Linear:
        return self.clip.visual_projection

    @property
    def text_projection(self) -> nn.Linear:
        return self.clip.text_projection

    @property
    def device(self) -> torch.device:
        return self.image_position_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual_projection.weight.dtype

    # ----------------------------------------------------------------------------------------- vision
    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patchify, prepend CLS, add (interpolated) positions, pre-LN: (B, 3, H, W) -> (B, 1+N, W)."""
        expected = (self.image_size, self.image_size)
        if tuple(pixel_values.shape[-2:]) != expected:
            raise BackboneError(f"images are {tuple(pixel_values.shape[-2:])}, the backbone was built for {expected}")
        embeddings = self.clip.vision_model.embeddings
        patches = embeddings.patch_embedding(pixel_values.to(self.dtype))  # (B, W, g, g)
        patches = patches.flatten(2).transpose(1, 2)  # (B, N, W)
        cls_token = embeddings.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # (B, 1, W)
        tokens = torch.cat([cls_token, patches], dim=1) + self.image_position_embedding.to(patches.dtype)
        return self.clip.vision_model.pre_layrnorm(tokens)  # (B, 1+N, W)

    def vision_block(self, index: int, x: torch.Tensor, vv_mode: VVMode | None = None) -> torch.Tensor:
        """Run 0-based vision block `index`; with `vv_mode` its attention is V-V attention."""
        layer = self.vision_layers[index]
        h = layer.layer_norm1(x)
        if vv_mode is None:
            h = self._self_attention(layer.self_attn, h, self.vision_heads, causal=False)
        else:
            h = self._vv_attention(layer.self_attn, h, self.vision_heads, vv_mode)
        x = x + h
        return x + layer.mlp(layer.layer_norm2(x))

    def image_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP's image embedding from the last block's tokens: post-LN of CLS, projected. (B, E)"""
        return self.visual_projection(self.ln_post(tokens[:, 0]))

    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor, levels: list[int] | None = None) -> VisionFeatures:
        """Plain CLIP pass: tokens after each 1-based level, and the image embedding."""
        levels = self._check_levels(levels)
        x = self.embed_image(pixel_values)
        level_tokens = []
        for index in range(self.num_vision_layers):
            x = self.vision_block(index, x)
            if index + 1 in levels:
                level_tokens.append(x)
        return VisionFeatures(level_tokens=level_tokens, image_embed=self.image_embedding(x))

    @torch.no_grad()
    def encode_image_vv(
        self,
        pixel_values: torch.Tensor,
        surgery_from: int,
        vv_mode: VVMode = "tokens",
        levels: list[int] | None = None,
        start: tuple[int, torch.Tensor] | None = None,
    ) -> VisionFeatures:
        """Stage-1 pass: level tokens from the V-V path, image embedding from the plain path.

        Blocks 1..surgery_from-1 are identical in both paths and run once. From `surgery_from` on, both
        paths run side by side in one batch through the shared LayerNorms, projections and MLPs; only
        the attention differs. Past the deepest requested level the V-V path stops. `start` = (k, tokens):
        the tokens after the first k plain blocks, already computed (shared with the adapted pass at test time).
        """
        levels = self._check_levels(levels)
        if not 1 <= surgery_from <= self.num_vision_layers:
            raise BackboneError(f"surgery_from={surgery_from} outside 1..{self.num_vision_layers}")
        done, x = start if start is not None else (0, self.embed_image(pixel_values))
        if done > surgery_from - 1 or done > min(levels):
            raise BackboneError(f"a shared start after {done} blocks is past the plain prefix of the V-V pass")
        batch = x.shape[0]
        level_tokens = []
        for index in range(done, surgery_from - 1):
            x = self.vision_block(index, x)
            if index + 1 in levels:
                level_tokens.append(x)
        both = torch.cat([x, x], dim=0)  # (2B, 1+N, W): plain rows first, V-V rows second
        last_vv = max(levels)  # past the deepest requested level only the plain path is still needed
        for index in range(surgery_from - 1, last_vv):
            both = self._dual_block(index, both, batch, vv_mode)
            if index + 1 in levels:
                level_tokens.append(both[batch:])
        plain = both[:batch] if last_vv >= surgery_from else x
        for index in range(max(last_vv, surgery_from - 1), self.num_vision_layers):
            plain = self.vision_block(index, plain)
        return VisionFeatures(level_tokens=level_tokens, image_embed=self.image_embedding(plain))

    def _dual_block(self, index: int, both: torch.Tensor, batch: int, vv_mode: VVMode) -> torch.Tensor:
        layer = self.vision_layers[index]
        attn = layer.self_attn
        h = layer.layer_norm1(both)
        plain_h = h[:batch]
        q = _split_heads(attn.q_proj(plain_h), self.vision_heads)
        k = _split_heads(attn.k_proj(plain_h), self.vision_heads)
        v_both = _split_heads(attn.v_proj(h), self.vision_heads)  # (2B, H, L, d)
        plain_out = F.scaled_dot_product_attention(q, k, v_both[:batch])
        vv_out = self._vv_core(v_both[batch:], vv_mode)
        h = attn.out_proj(_merge_heads(torch.cat([plain_out, vv_out], dim=0)))
        both = both + h
        return both + layer.mlp(layer.layer_norm2(both))

    # ------------------------------------------------------------------------------------------- text
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids padded to the longest text (not to 77): (B, T). Tokens after EOT never matter (causal)."""
        encoded = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return encoded["input_ids"].to(self.device)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings: (B, T) -> (B, T, Wt)."""
        embeddings = self.clip.text_model.embeddings
        positions = embeddings.position_embedding.weight[: input_ids.shape[1]]
        return embeddings.token_embedding(input_ids) + positions

    def text_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Run 0-based text block `index` with CLIP's causal mask."""
        layer = self.text_layers[index]
        x = x + self._self_attention(layer.self_attn, layer.layer_norm1(x), self.text_heads, causal=True)
        return x + layer.mlp(layer.layer_norm2(x))

    def eot_features(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm, then the EOT position of each text: (B, T, Wt) -> (B, Wt)."""
        eot_positions = (input_ids == self.eot_token_id).int().argmax(dim=-1)
        x = self.clip.text_model.final_layer_norm(x)
        return x[torch.arange(x.shape[0], device=x.device), eot_positions]

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """CLIP's own text embedding (EOT feature through the text projection): (B, E)."""
        input_ids = self.tokenize(texts)
        x = self.embed_text(input_ids).to(self.dtype)
        for index in range(self.num_text_layers):
            x = self.text_block(index, x)
        return self.text_projection(self.eot_features(x, input_ids))

    # -------------------------------------------------------------------------------------- attention
    @staticmethod
    def _self_attention(attn: CLIPAttention, h: torch.Tensor, num_heads: int, causal: bool) -> torch.Tensor:
        q = _split_heads(attn.q_proj(h), num_heads)
        k = _split_heads(attn.k_proj(h), num_heads)
        v = _split_heads(attn.v_proj(h), num_heads)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, L, d)
        return attn.out_proj(_merge_heads(out))

    def _vv_attention(self, attn: CLIPAttention, h: torch.Tensor, num_heads: int, vv_mode: VVMode) -> torch.Tensor:
        v = _split_heads(attn.v_proj(h), num_heads)
        return attn.out_proj(_merge_heads(self._vv_core(v, vv_mode)))

    @staticmethod
    def _vv_core(v: torch.Tensor, vv_mode: VVMode) -> torch.Tensor:
        """softmax(v vᵀ · d^-½) v over tokens, or, in `batch` mode (the public code's quirk), over the batch axis.

        The public code hands a sequence-first (N, B, D) tensor to an attention written for (B, N, D), so each
        token position attends across the images of the batch; with one image the result is v itself. `alone`
        is that quirk with every image on its own, for paths whose result must not depend on the batch.
        """
        if vv_mode == "tokens":
            return F.scaled_dot_product_attention(v, v, v)
        if vv_mode == "batch":
            v_t = v.transpose(0, 2)  # (N, H, B, d): attention runs over B
            return F.scaled_dot_product_attention(v_t, v_t, v_t).transpose(0, 2)
        if vv_mode == "alone":  # batch mode with every image in a batch of its own: softmax over one is 1
            return v
        raise BackboneError(f"vv_mode must be 'tokens', 'batch' or 'alone', got {vv_mode!r}")

    def _check_levels(self, levels: list[int] | None) -> list[int]:
        levels = sorted(set(levels)) if levels else self.levels
        bad = [level for level in levels if not 1 <= level <= self.num_vision_layers]
        if bad:
            raise BackboneError(f"levels {bad} outside 1..{self.num_vision_layers}")
        return levels


# ============================================================================================== loaders
def tiny_clip_config(tokenizer: CLIPTokenizer) -> CLIPConfig:
    """A few small layers so that everything runs on a CPU in seconds. Levels scale to its 8 vision blocks."""
    return CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
        vision_config={
            "hidden_size": 96,
            "intermediate_size": 384,
            "num_hidden_layers": 8,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 8,
            "hidden_act": "quick_gelu",
        },
        projection_dim=64,
    )


def build_tiny_clip() -> tuple[CLIPModel, CLIPTokenizer]:
    """The `tiny` preset: random weights, identical in every process, and an offline tokenizer."""
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        clip = CLIPModel(tiny_clip_config(tokenizer))
    return clip, tokenizer


def load_clip(
    source: str,
    *,
    image_size: int | None = None,
    levels: list[int] | None = None,
    gelu: GeluKind = "quick",
    tokenizer: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FrozenCLIP:
    """Build a frozen CLIP from `tiny`, an OpenAI-format checkpoint file, or a Hugging Face id / directory."""
    if source == "tiny":
        clip, tok = build_tiny_clip()
        if tokenizer:
            tok = _load_tokenizer(tokenizer)
    elif Path(source).suffix in OPENAI_CHECKPOINT_SUFFIXES:
        path = Path(source)
        if not path.is_file():
            raise BackboneError(f"CLIP checkpoint file not found: {path}")
        clip = clip_from_openai_state_dict(read_openai_checkpoint(path))
        tok = _load_tokenizer(tokenizer or DEFAULT_TOKENIZER)
    else:
        clip = _load_pretrained(source)
        tok = _load_tokenizer(tokenizer or source)
    backbone = FrozenCLIP(clip, tok, image_size=image_size, levels=levels, gelu=gelu)
    return backbone.to(device=device, dtype=dtype)


def _load_pretrained(source: str) -> CLIPModel:
    try:
        return CLIPModel.from_pretrained(source)
    except OSError as error:
        hint = (
            "it is not a local directory with config.json and weights"
            if Path(source).exists()
            else "no such local directory, and the Hugging Face Hub could not provide it (offline? set HF_HOME "
            "to a cache that has it, or pass a local directory or an OpenAI .pt file)"
        )
        raise BackboneError(f"could not load CLIP from {source!r}: {hint}. ({error})") from error


def _load_tokenizer(source: str) -> CLIPTokenizer:
    try:
        tok = CLIPTokenizer.from_pretrained(source)
    except OSError as error:
        raise BackboneError(
            f"could not load a CLIP tokenizer from {source!r} (pass --tokenizer with a local directory or "
            f"Hugging Face id). ({error})"
        ) from error
    if tok.model_max_length > 10_000:
        tok.model_max_length = 77
    return tok


# ------------------------------------------------------------------------------ OpenAI-format checkpoints
def read_openai_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a TorchScript archive (OpenAI's `ViT-L-14-336px.pt`) or a plain state dict; tensors on CPU."""
    if is_torchscript_archive(path):
        try:
            state_dict = read_torchscript_state_dict(path)  # read as data: torch.jit.load would run the archive's code
        except TorchScriptError as error:
            raise BackboneError(str(error)) from error
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and torch errors all mean the same thing to the user
            raise BackboneError(f"{path}: not a readable PyTorch checkpoint ({error})") from error
    if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict):
        raise BackboneError(f"{path}: expected a state dict, found {type(state_dict).__name__}")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    for extra in ("input_resolution", "context_length", "vocab_size"):  # scalars in OpenAI's archives
        state_dict.pop(extra, None)
    return state_dict


def _count_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(key[len(prefix) :].split(".")[0]) for key in state_dict if key.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def clip_from_openai_state_dict(state_dict: dict[str, torch.Tensor]) -> CLIPModel:
    """Convert OpenAI / open_clip ViT key names (`visual.transformer.resblocks.*`, ...) to transformers' CLIP."""
    required = [
        "visual.conv1.weight",
        "visual.positional_embedding",
        "visual.proj",
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "text_projection",
    ]
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise BackboneError(
            f"not an OpenAI-format ViT CLIP checkpoint: missing {missing} (ResNet CLIPs are not supported)"
        )
    vision_width, _, patch_size, _ = state_dict["visual.conv1.weight"].shape
    trained_grid = math.isqrt(state_dict["visual.positional_embedding"].shape[0] - 1)
    text_width = state_dict["ln_final.weight"].shape[0]
    vision_layers = _count_blocks(state_dict, "visual.transformer.resblocks.")
    text_layers = _count_blocks(state_dict, "transformer.resblocks.")
    config = CLIPConfig(
        text_config={
            "vocab_size": state_dict["token_embedding.weight"].shape[0],
            "hidden_size": text_width,
            "intermediate_size": state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_width // 64,  # OpenAI's rule: 64-wide heads
            "max_position_embeddings": state_dict["positional_embedding"].shape[0],
            "hidden_act": "quick_gelu",
        },
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": vision_layers,
            "num_attention_heads": vision_width // 64,
            "image_size": trained_grid * patch_size,
            "patch_size": patch_size,
            "hidden_act": "quick_gelu",
        },
        projection_dim=state_dict["visual.proj"].shape[1],
    )
    converted = {
        "vision_model.embeddings.class_embedding": state_dict["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state_dict["visual.positional_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state_dict["visual.conv1.weight"],
        "vision_model.pre_layrnorm.weight": state_dict["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state_dict["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state_dict["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state_dict["visual.ln_post.bias"],
        "visual_projection.weight": state_dict["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": state_dict["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state_dict["positional_embedding"],
        "text_model.final_layer_norm.weight": state_dict["ln_final.weight"],
        "text_model.final_layer_norm.bias": state_dict["ln_final.bias"],
        "text_projection.weight": state_dict["text_projection"].t(),
        "logit_scale": state_dict.get("logit_scale", torch.tensor(math.log(1 / 0.07))),
    }
    for source_prefix, target_prefix, count in [
        ("visual.transformer.resblocks.", "vision_model.encoder.layers.", vision_layers),
        ("transformer.resblocks.", "text_model.encoder.layers.", text_layers),
    ]:
        for index in range(count):
            converted.update(_convert_block(state_dict, f"{source_prefix}{index}.", f"{target_prefix}{index}."))
    clip = CLIPModel(config)
    result = clip.load_state_dict({key: value.float() for key, value in converted.items()}, strict=False)
    if result.missing_keys:
        raise BackboneError(f"OpenAI checkpoint conversion left weights unset: {result.missing_keys[:8]}")
    return clip


def _convert_block(state_dict: dict[str, torch.Tensor], source: str, target: str) -> dict[str, torch.Tensor]:
    q_weight, k_weight, v_weight = state_dict[f"{source}attn.in_proj_weight"].chunk(3, dim=0)
    q_bias, k_bias, v_bias = state_dict[f"{source}attn.in_proj_bias"].chunk(3, dim=0)
    renamed = {
        "self_attn.q_proj.weight": q_weight,
        "self_attn.q_proj.bias": q_bias,
        "self_attn.k_proj.weight": k_weight,
        "self_attn.k_proj.bias": k_bias,
        "self_attn.v_proj.weight": v_weight,
        "self_attn.v_proj.bias": v_bias,
    }
    for source_name, target_name in [
        ("attn.out_proj", "self_attn.out_proj"),
        ("ln_1", "layer_norm1"),
        ("ln_2", "layer_norm2"),
        ("mlp.c_fc", "mlp.fc1"),
        ("mlp.c_proj", "mlp.fc2"),
    ]:
        for param in ("weight", "bias"):
            renamed[f"{target_name}.{param}"] = state_dict[f"{source}{source_name}.{param}"]
    return {f"{target}{name}": value for name, value in renamed.items()}


def load_backbone(config: BackboneConfig, gelu: GeluKind, device: str | torch.device = "cpu") -> FrozenCLIP:
    """The frozen CLIP a `BackboneConfig` names, at its image size (`device` may be `auto`)."""
    return load_clip(
        config.clip,
        image_size=config.image_size,
        gelu=gelu,
        tokenizer=config.tokenizer,
        device=resolve_device(device) if isinstance(device, str) else device,
    )
