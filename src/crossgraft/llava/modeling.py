"""LLaVA-OneVision (Qwen2 + SigLIP) and its alternating-attention variants, with LLaVA-NeXT parameter names.

One model class serves the three variants; the config decides the attention rule of each decoder layer and
whether gated cross-attention blocks exist:

    variant              model_type                                 odd layers (not the last)    new weights
    base                 llava_qwen                                 causal                       –
    alternating          llava_qwen_with_alternating_attn           within own modality          –
    alternating_cross    llava_qwen_with_alternating_cross_attn
        xattn_mode=gated                                            causal                       model.xattn.{i}
        xattn_mode=mask                                             other modality + self        –

Every rule is also causal and ignores padding. `<image>` placeholders (id -200) in `input_ids` are replaced by
that image's projected SigLIP features (plus one `image_newline`), as LLaVA-NeXT does.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2MLP, Qwen2RMSNorm, Qwen2RotaryEmbedding

from crossgraft.errors import ShapeError
from crossgraft.llava.anyres import grid_shape, is_anyres, max_tiles, merge_tiles, parse_grid_pinpoints
from crossgraft.llava.configuration import (
    IGNORE_INDEX,
    SUPPORTED_ATTENTION,
    LlavaConfigError,
    LlavaQwenAlternatingConfig,
    LlavaQwenAlternatingCrossConfig,
    LlavaQwenConfig,
)
from crossgraft.llava.masks import additive, flex_block_masks, layer_masks
from crossgraft.llava.vision import SigLipVisionTower, build_projector

ImageTiles = torch.Tensor | list[torch.Tensor]  # (N, 3, S, S) one tile per image, or N × (T_i, 3, S, S)
ImageSizes = torch.Tensor | list[tuple[int, int]] | None  # (N, 2) width, height of each image as read
# transformers renamed the decoder layers' cache argument (past_key_values → cache); pass it by the name it has.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(Qwen2DecoderLayer.forward).parameters else "past_key_values"


def check_attention_implementation(name: str | None) -> None:
    """Refuse an attention implementation that cannot express the per-layer masks, saying which ones can."""
    if name in (None, *SUPPORTED_ATTENTION):
        return
    raise LlavaConfigError(
        f"attn_implementation {name!r} is not supported: the alternating layers need an arbitrary per-layer mask "
        "(text↔text, image↔image), which flash-attention's causal/varlen kernels cannot express. "
        "Use 'sdpa' (default), 'flex_attention' (block-sparse masks, compiled on first use) or 'eager'."
    )


@dataclass
class MultimodalInputs:
    """A batch after the images were spliced in; every tensor has the spliced length L."""

    inputs_embeds: torch.Tensor  # (B, L, D)
    attention_mask: torch.Tensor  # (B, L) 1 = real token
    position_ids: torch.Tensor  # (B, L)
    image_token_mask: torch.Tensor  # (B, L) True where the position holds an image feature
    labels: torch.Tensor | None  # (B, L), IGNORE_INDEX at images, padding and unlearned text
    image_context: torch.Tensor | None  # (B, M, D) each sample's image features, for the gated blocks
    image_context_mask: torch.Tensor | None  # (B, M) True = a real image feature


class KeyValueCache:
    """Keys and values of every decoder layer for cached generation, preallocated for `capacity` positions, plus
    each gated block's image keys and values (computed once per sample, at the prompt).

    The decoder layers call `update` (transformers' Cache protocol): the new keys and values are written after
    the ones already stored, and the attention gets all of them.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.keys: dict[int, torch.Tensor] = {}  # layer → (B, H_kv, capacity, head_dim)
        self.values: dict[int, torch.Tensor] = {}
        self.lengths: dict[int, int] = {}
        self.image_keys_values: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # gated block → (B, H, M, hd) × 2

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_index: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new keys and values (B, H_kv, Q, head_dim) after the earlier ones; returns all of them
        (B, H_kv, K, head_dim)."""
        if layer_index not in self.keys:
            batch, heads, _, head_dim = key.shape
            self.keys[layer_index] = key.new_empty(batch, heads, self.capacity, head_dim)
            self.values[layer_index] = value.new_empty(batch, heads, self.capacity, head_dim)
            self.lengths[layer_index] = 0
        start = self.lengths[layer_index]
        end = start + key.shape[2]
        if end > self.capacity:
            raise ShapeError(f"the KV cache holds {self.capacity} positions; {end} were asked for")
        self.keys[layer_index][:, :, start:end] = key
        self.values[layer_index][:, :, start:end] = value
        self.lengths[layer_index] = end
        return self.keys[layer_index][:, :, :end], self.values[layer_index][:, :, :end]


@dataclass
class Generation:
    """What `LlavaQwenForCausalLM.decode` returns."""

    tokens: torch.Tensor  # (B, T) new tokens, pad_token_id after each row's end
    scores: torch.Tensor | None  # (B, T, vocab) the logits each token was chosen from, with output_scores


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo-style gated cross-attention: text tokens attend to their sample's projected image features.

        h = h + tanh(attn_gate) · CrossAttn(norm(h), image_context)
        h = h + tanh(ff_gate) · MLP(norm(h))

    Only text positions of samples that have an image are updated. Both gates start at exactly 0 (set in
    `_init_weights`, which transformers runs on newly created weights), so a fresh block is an identity.
    """

    def __init__(self, config: LlavaQwenAlternatingCrossConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        width = self.num_heads * self.head_dim
        self.attn_norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.context_norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.q_proj = nn.Linear(config.hidden_size, width, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, width, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, width, bias=True)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff_norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = Qwen2MLP(config)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def image_keys_values(self, image_context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, M, head_dim) of the image context (B, M, D)."""
        batch, context_length, _ = image_context.shape
        context = self.context_norm(image_context)
        key = self.k_proj(context).view(batch, context_length, self.num_heads, self.head_dim)
        value = self.v_proj(context).view(batch, context_length, self.num_heads, self.head_dim)
        return key.transpose(1, 2), value.transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        image_context: torch.Tensor,
        image_context_mask: torch.Tensor,
        text_token_mask: torch.Tensor,
        image_keys_values: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """hidden_states (B, L, D), image_context (B, M, D), image_context_mask (B, M), text_token_mask (B, L);
        image_keys_values: the context's keys and values when already computed (cached generation)."""
        batch, length, _ = hidden_states.shape
        key, value = image_keys_values if image_keys_values is not None else self.image_keys_values(image_context)
        query = self.q_proj(self.attn_norm(hidden_states)).view(batch, length, self.num_heads, self.head_dim)
        mask = additive(image_context_mask[:, None, None, :], query.dtype)  # (B, 1, 1, M)
        attended = F.scaled_dot_product_attention(query.transpose(1, 2), key, value, attn_mask=mask)  # (B, H, L, hd)
        attended = self.o_proj(attended.transpose(1, 2).reshape(batch, length, -1))  # (B, L, D)

        # where(), not a product: positions that must not change stay bit-identical.
        updated = (text_token_mask & image_context_mask.any(dim=1, keepdim=True))[..., None]  # (B, L, 1)
        hidden_states = hidden_states + torch.where(updated, torch.tanh(self.attn_gate) * attended, 0.0)
        feed_forward = self.mlp(self.ff_norm(hidden_states))
        return hidden_states + torch.where(updated, torch.tanh(self.ff_gate) * feed_forward, 0.0)


class LlavaQwenPreTrainedModel(PreTrainedModel):
    config_class = LlavaQwenConfig
    config: LlavaQwenConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "SiglipEncoderLayer", "GatedCrossAttentionBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, GatedCrossAttentionBlock):
            init.zeros_(module.attn_gate)
            init.zeros_(module.ff_gate)
        elif isinstance(module, LlavaQwenModel):
            # LLaVA-NeXT: randn(hidden) / sqrt(hidden)
            init.normal_(module.image_newline, mean=0.0, std=1.0 / math.sqrt(self.config.hidden_size))


class LlavaQwenModel(LlavaQwenPreTrainedModel):
    """The decoder stack plus the image side. Parameter names match LLaVA-NeXT's `LlavaQwenModel`."""

    def __init__(self, config: LlavaQwenConfig):
        super().__init__(config)
        if any(kind != "full_attention" for kind in config.layer_types or []):
            raise LlavaConfigError("sliding-window Qwen2 layers are not supported (set use_sliding_window=false)")
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([Qwen2DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=config)

        self.vision_tower = SigLipVisionTower(config)
        self.mm_projector = build_projector(config)
        self.image_newline = nn.Parameter(torch.empty(config.hidden_size))
        # Empty (no parameters) unless the config is a gated alternating_cross one.
        gated = config if isinstance(config, LlavaQwenAlternatingCrossConfig) else None
        self.xattn = nn.ModuleDict(
            {str(i): GatedCrossAttentionBlock(gated) for i in gated.xattn_layers} if gated else {}
        )
        self.gradient_checkpointing = False
        self.post_init()

    def layer_rule(self, layer_index: int) -> str:
        """The attention rule of one decoder layer, as the config stores it."""
        rules = self.config.layer_attention_rules
        assert rules is not None  # the config fills it in when it is made
        return str(rules[layer_index])

    # ------------------------------------------------------------------------------------------- images
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) tiles → (N, P, D) LM-width patch features (tower, then projector)."""
        tune_tower = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(tune_tower and torch.is_grad_enabled()):
            patch_features = self.vision_tower(images)  # (N, P, W)
        return self.mm_projector(patch_features.to(self.mm_projector[0].weight.dtype))  # (N, P, D)

    def image_features(self, images: ImageTiles, image_sizes: ImageSizes = None) -> list[torch.Tensor]:
        """Each image's spliced features (T_i, D), as LLaVA-NeXT merges them.

        images: a tensor (N, 3, S, S) of one tile per image, or a list of N tensors (T_i, 3, S, S). A single tile
        gives its patch features plus one `image_newline` (for "unpad" merges). Several tiles are an anyres image:
        the base tile's features, then the grid's, unpadded to `image_sizes[i]` (width, height) with a newline per
        row (crossgraft.llava.anyres). All tiles of the batch go through the tower together.
        """
        if isinstance(images, torch.Tensor):  # one tile per image, already one batch
            tiles, tile_counts = images, [1] * len(images)
        else:
            tiles, tile_counts = torch.cat(list(images)), [len(image_tiles) for image_tiles in images]
        encoded = self.encode_images(tiles).split(tile_counts)
        features = []
        for index, image_features in enumerate(encoded):  # (T_i, P, D)
            if len(image_features) > 1:
                features.append(self._merge_anyres(index, image_features, image_sizes))
            elif "unpad" in self.config.mm_patch_merge_type:
                features.append(torch.cat([image_features[0], self.image_newline[None].to(image_features.dtype)]))
            else:
                features.append(image_features[0])
        return features

    def _merge_anyres(self, index: int, image_features: torch.Tensor, image_sizes: ImageSizes) -> torch.Tensor:
        config = self.config
        tiles = len(image_features)
        if not is_anyres(config.image_aspect_ratio) or "unpad" not in config.mm_patch_merge_type:
            raise ShapeError(
                f"image {index} comes as {tiles} tiles, but the model merges tiles only for image_aspect_ratio "
                f"anyres[_max_N] with mm_patch_merge_type spatial_unpad (it has {config.image_aspect_ratio}, "
                f"{config.mm_patch_merge_type}); process the images with the model's own settings"
            )
        if image_sizes is None or len(image_sizes) <= index:
            raise ShapeError(f"image {index} comes as {tiles} anyres tiles but no image_sizes entry says its size")
        width, height = (int(v) for v in image_sizes[index])
        tile_size = self.vision_tower.image_size
        grid = grid_shape((width, height), parse_grid_pinpoints(config.image_grid_pinpoints, tile_size), tile_size)
        if tiles != 1 + grid[0] * grid[1]:
            raise ShapeError(
                f"image {index} ({width}x{height}) comes as {tiles} tiles, but the model's image_grid_pinpoints give "
                f"it a {grid[0]}x{grid[1]} grid: 1 + {grid[0] * grid[1]} tiles (were the images processed with "
                "other pinpoints?)"
            )
        most_tiles = max_tiles(config.image_aspect_ratio)
        return merge_tiles(image_features[0], image_features[1:], (width, height), grid, self.image_newline, most_tiles)

    def prepare_multimodal_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: ImageTiles | None = None,
        padding_side: str | None = None,
        image_sizes: ImageSizes = None,
    ) -> MultimodalInputs:
        """Splice image features in at the `<image>` placeholders, then re-pad the batch on `padding_side`
        (default: the config's tokenizer_padding_side; generation pads on the left).

        Images are consumed in order: the k-th placeholder of the batch (row by row) takes images[k] (see
        `image_features` for the two forms of `images`).
        """
        config = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        placeholder = input_ids == config.image_token_index  # (B, S)
        placeholder_count = int(placeholder.sum())
        image_count = 0 if images is None else len(images)
        if placeholder_count != image_count:
            raise ShapeError(
                f"the batch has {placeholder_count} <image> placeholders but {image_count} images were given"
            )
        text_embeds = self.embed_tokens(input_ids.clamp(min=0))  # (B, S, D); placeholder rows are replaced
        image_features = self.image_features(images, image_sizes) if images is not None and image_count else []

        sequences, sequence_labels, sequence_is_image, contexts = [], [], [], []
        next_image = 0
        for row in range(input_ids.shape[0]):
            real = attention_mask[row].bool()
            embeds, is_placeholder = text_embeds[row][real], placeholder[row][real]
            row_labels = labels[row][real] if labels is not None else None
            pieces, piece_labels, piece_is_image, row_context = [], [], [], []
            start = 0
            for position in [*is_placeholder.nonzero().flatten().tolist(), int(is_placeholder.numel())]:
                pieces.append(embeds[start:position])
                piece_is_image.append(torch.zeros(position - start, dtype=torch.bool, device=embeds.device))
                if row_labels is not None:
                    piece_labels.append(row_labels[start:position])
                if position == is_placeholder.numel():
                    break
                features = image_features[next_image]  # (T_k, D)
                next_image += 1
                pieces.append(features.to(embeds.dtype))
                piece_is_image.append(torch.ones(len(features), dtype=torch.bool, device=embeds.device))
                piece_labels.append(torch.full((len(features),), IGNORE_INDEX, dtype=torch.long, device=embeds.device))
                row_context.append(features)
                start = position + 1
            sequences.append(torch.cat(pieces))
            sequence_is_image.append(torch.cat(piece_is_image))
            sequence_labels.append(torch.cat(piece_labels) if row_labels is not None else None)
            contexts.append(torch.cat(row_context) if row_context else embeds.new_zeros(0, embeds.shape[-1]))

        limit = config.tokenizer_model_max_length
        if limit is not None:
            sequences = [s[:limit] for s in sequences]
            sequence_is_image = [m[:limit] for m in sequence_is_image]
            sequence_labels = [lab[:limit] if lab is not None else None for lab in sequence_labels]
        side = padding_side or config.tokenizer_padding_side
        return self._pad(sequences, sequence_labels, sequence_is_image, contexts, labels is not None, side)

    def _pad(
        self,
        sequences: list[torch.Tensor],
        sequence_labels: list[torch.Tensor | None],
        sequence_is_image: list[torch.Tensor],
        contexts: list[torch.Tensor],
        with_labels: bool,
        padding_side: str,
    ) -> MultimodalInputs:
        batch = len(sequences)
        length = max(len(s) for s in sequences)
        hidden, device, dtype = sequences[0].shape[-1], sequences[0].device, sequences[0].dtype
        inputs_embeds = torch.zeros(batch, length, hidden, dtype=dtype, device=device)  # (B, L, D)
        attention_mask = torch.zeros(batch, length, dtype=torch.long, device=device)
        position_ids = torch.zeros(batch, length, dtype=torch.long, device=device)
        image_token_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=device) if with_labels else None
        for row, sequence in enumerate(sequences):
            n = len(sequence)
            span = slice(length - n, length) if padding_side == "left" else slice(0, n)
            inputs_embeds[row, span] = sequence
            attention_mask[row, span] = 1
            position_ids[row, span] = torch.arange(n, device=device)
            image_token_mask[row, span] = sequence_is_image[row]
            row_labels = sequence_labels[row]
            if labels is not None and row_labels is not None:
                labels[row, span] = row_labels

        image_context = image_context_mask = None
        context_length = max(len(c) for c in contexts)
        if context_length and len(self.xattn):  # only the gated blocks read the image context
            image_context = torch.zeros(batch, context_length, hidden, dtype=dtype, device=device)  # (B, M, D)
            image_context_mask = torch.zeros(batch, context_length, dtype=torch.bool, device=device)  # (B, M)
            for row, context in enumerate(contexts):
                image_context[row, : len(context)] = context
                image_context_mask[row, : len(context)] = True
        return MultimodalInputs(
            inputs_embeds, attention_mask, position_ids, image_token_mask, labels, image_context, image_context_mask
        )

    # ------------------------------------------------------------------------------------------ decoder
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        key_is_image: torch.Tensor,
        image_context: torch.Tensor | None = None,
        image_context_mask: torch.Tensor | None = None,
        cache: KeyValueCache | None = None,
    ) -> BaseModelOutputWithPast:
        """Run the decoder on already spliced embeddings: inputs_embeds and position_ids (B, Q, …) for the
        queries; attention_mask and key_is_image (B, K) for every key. Without a cache Q = K. With one, the
        queries are the last Q keys, the earlier ones come from the cache, and this call's keys are added to it."""
        check_attention_implementation(self.config._attn_implementation)
        queries = inputs_embeds.shape[1]
        query_is_text = ~key_is_image[:, -queries:]  # (B, Q)

        rules = {self.layer_rule(i) for i in range(len(self.layers))}
        implementation = self.config._attn_implementation
        if implementation == "flex_attention" and queries < attention_mask.shape[1] and not inputs_embeds.is_cuda:
            # inductor's CPU flex template does not compile for cached single-query steps (torch 2.13): those run
            # through sdpa with the same rule, which at one query costs the same anyway
            implementation = "sdpa"
        if implementation == "flex_attention":  # block-sparse: blocks no query may see cost nothing
            if torch.is_grad_enabled() and inputs_embeds.requires_grad and not inputs_embeds.is_cuda:
                raise LlavaConfigError(
                    "flex_attention has no backward pass on the CPU (torch's FlexAttention): train with "
                    "attn_implementation sdpa there; flex_attention runs forward passes and generation on the CPU"
                )
            masks = flex_block_masks(attention_mask, key_is_image, rules, queries)
        else:
            masks = layer_masks(  # (B, 1, Q, K) each, or None for a plain causal sdpa layer
                attention_mask, key_is_image, rules, inputs_embeds.dtype, implementation, queries
            )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        cache_argument = {CACHE_ARGUMENT: cache} if cache is not None else {}
        with attention_implementation(self.config, implementation):
            for i, decoder_layer in enumerate(self.layers):
                block = str(i)
                if block in self.xattn and image_context is not None and image_context_mask is not None:
                    gated = cast(GatedCrossAttentionBlock, self.xattn[block])
                    image_keys_values = None
                    if cache is not None:
                        if block not in cache.image_keys_values:
                            cache.image_keys_values[block] = gated.image_keys_values(image_context)
                        image_keys_values = cache.image_keys_values[block]
                    hidden_states = gated(
                        hidden_states, image_context, image_context_mask, query_is_text, image_keys_values
                    )
                hidden_states = decoder_layer(
                    hidden_states,
                    attention_mask=masks[self.layer_rule(i)],
                    position_embeddings=position_embeddings,
                    position_ids=position_ids,
                    **cache_argument,
                )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states)


@contextmanager
def attention_implementation(config: LlavaQwenConfig, name: str | None) -> Iterator[None]:
    """Run the decoder layers with attention `name` (they read it from the shared config), then restore it."""
    previous = config._attn_implementation
    if name == previous:
        yield
        return
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


class LlavaQwenForCausalLM(LlavaQwenPreTrainedModel):
    """`llava_qwen`: LLaVA-OneVision as published (every layer causal)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LlavaQwenConfig):
        super().__init__(config)
        self.model = LlavaQwenModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (vocab, D)."""
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the token embedding (vocab, D)."""
        if not isinstance(value, nn.Embedding):
            raise LlavaConfigError(f"input embeddings must be an nn.Embedding, got {type(value).__name__}")
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: ImageTiles | None = None,
        image_sizes: ImageSizes = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """input_ids (B, S) with `<image>` placeholders (-200); images in placeholder order, each one tile or its
        anyres tiles, and image_sizes (N, 2) for the anyres ones (see `LlavaQwenModel.image_features`).
        Other keyword arguments (num_items_in_batch from the Trainer) go to the loss. There is no KV cache."""
        if kwargs.pop("past_key_values", None) is not None:
            raise NotImplementedError("a KV cache is not supported; generate() re-runs the prompt at every step")
        kwargs.pop("use_cache", None)
        batch, hidden_states = self.splice_and_decode(input_ids, attention_mask, labels, images, image_sizes)
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)  # (B, L, vocab)
        loss = None
        if batch.labels is not None:
            loss = self.loss_function(logits=logits, labels=batch.labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def splice_and_decode(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        images: ImageTiles | None,
        image_sizes: ImageSizes = None,
    ) -> tuple[MultimodalInputs, torch.Tensor]:
        """The spliced batch and the decoder's last hidden states (B, L, D)."""
        batch = self.model.prepare_multimodal_inputs(input_ids, attention_mask, labels, images, None, image_sizes)
        hidden_states = self.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            key_is_image=batch.image_token_mask,
            image_context=batch.image_context,
            image_context_mask=batch.image_context_mask,
        ).last_hidden_state
        return batch, hidden_states

    generation_config: Any = None  # peft's CAUSAL_LM wrapper sets and reads it; generate() takes settings as arguments

    @classmethod
    def can_generate(cls) -> bool:
        """False for transformers: `generate` is this class's own (not GenerationMixin's), so there is no
        generation_config to load, and no warning about a `prepare_inputs_for_generation` without GenerationMixin."""
        return False

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: ImageTiles | None = None,
        image_sizes: ImageSizes = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One forward pass's inputs, for code that asks the model for them (peft's `task_type="CAUSAL_LM"`
        wrapper, as LLaVA-NeXT uses it, keeps a reference). `generate` itself keeps its own cache."""
        return {"input_ids": input_ids, "attention_mask": attention_mask, "images": images, "image_sizes": image_sizes}

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """`decode(...)`'s new tokens (B, T), pad_token_id after each row's end."""
        return self.decode(*args, **kwargs).tokens

    @torch.no_grad()
    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: ImageTiles | None = None,
        *,
        max_new_tokens: int = 32,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        image_sizes: ImageSizes = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        output_scores: bool = False,
    ) -> Generation:
        """Greedy decoding or sampling (temperature, nucleus top_p) until each row's end token.

        input_ids (B, S) with `<image>` placeholders and any padding; images in placeholder order. With the KV
        cache (default) the prompt runs once, left-padded, and each step adds one token: its mask row is built
        from the row's modality segments exactly as a full forward would build it, under every layer's rule, and
        the gated blocks' image keys and values are computed once. `use_cache=False` re-runs the whole sequence
        at every step (the reference the cached path is tested against; cost grows with the square of the answer).
        """
        if temperature <= 0 or not 0 < top_p <= 1:
            raise LlavaConfigError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        eos = eos_token_id if eos_token_id is not None else self.config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        pad = pad_token_id if pad_token_id is not None else (self.config.pad_token_id or 0)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)

        def choose(logits: torch.Tensor) -> torch.Tensor:  # (B, vocab) → (B,)
            if not do_sample:
                return logits.argmax(dim=-1)
            return sample_token(logits, temperature, top_p, generator)

        steps = _cached_steps if use_cache else _uncached_steps
        answers: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
        scores: list[torch.Tensor] = []
        finished = [False] * len(answers)
        for logits, feed in steps(self, input_ids, attention_mask, images, image_sizes, max_new_tokens):
            next_tokens = choose(logits.float())  # (B,)
            if output_scores:
                scores.append(logits)
            for row, token in enumerate(next_tokens.tolist()):
                if not finished[row]:
                    answers[row].append(token)
                    finished[row] = token in eos_ids
            if all(finished):
                break
            feed(next_tokens)
        tokens = _right_pad([input_ids.new_tensor(answer) for answer in answers], pad)[0]
        all_scores = torch.stack(scores, dim=1) if output_scores and scores else None  # (B, T, vocab)
        return Generation(tokens, all_scores)


def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row (B,) from logits (B, vocab): softmax at `temperature`, restricted to the smallest set of
    most likely tokens whose probability reaches `top_p` (at least one token)."""
    probabilities = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sorted_probabilities, order = probabilities.sort(dim=-1, descending=True)
        before = sorted_probabilities.cumsum(dim=-1) - sorted_probabilities  # mass of the more likely tokens
        sorted_probabilities = sorted_probabilities.masked_fill(before >= top_p, 0.0)
        probabilities = torch.zeros_like(probabilities).scatter(-1, order, sorted_probabilities)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


# A decoding loop yields the logits (B, vocab) of the next token and a function that takes the chosen tokens (B,)
# back before the next step.
DecodingSteps = Iterator[tuple[torch.Tensor, Callable[[torch.Tensor], None]]]


def _cached_steps(
    model: LlavaQwenForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    images: ImageTiles | None,
    image_sizes: ImageSizes,
    max_new_tokens: int,
) -> DecodingSteps:
    batch = model.model.prepare_multimodal_inputs(input_ids, attention_mask, None, images, "left", image_sizes)
    cache = KeyValueCache(batch.attention_mask.shape[1] + max_new_tokens)
    key_is_real, key_is_image = batch.attention_mask, batch.image_token_mask  # (B, K)
    next_position = batch.attention_mask.sum(dim=1, keepdim=True)  # (B, 1): positions restart at 0 in every row
    hidden = model.model(
        batch.inputs_embeds,
        key_is_real,
        batch.position_ids,
        key_is_image,
        batch.image_context,
        batch.image_context_mask,
        cache=cache,
    ).last_hidden_state  # (B, L, D)
    new_token: list[torch.Tensor] = []

    def feed(next_tokens: torch.Tensor) -> None:
        new_token[:] = [next_tokens]

    for step in range(max_new_tokens):
        yield model.lm_head(hidden[:, -1]), feed
        if step == max_new_tokens - 1:
            return
        key_is_real = torch.cat([key_is_real, torch.ones_like(key_is_real[:, :1])], dim=1)
        key_is_image = torch.cat([key_is_image, torch.zeros_like(key_is_image[:, :1])], dim=1)
        embeds = model.model.embed_tokens(new_token[0])[:, None]  # (B, 1, D)
        hidden = model.model(
            embeds,
            key_is_real,
            next_position,
            key_is_image,
            batch.image_context,
            batch.image_context_mask,
            cache=cache,
        ).last_hidden_state  # (B, 1, D)
        next_position = next_position + 1


def _uncached_steps(
    model: LlavaQwenForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    images: ImageTiles | None,
    image_sizes: ImageSizes,
    max_new_tokens: int,
) -> DecodingSteps:
    prompts = [row[mask.bool()] for row, mask in zip(input_ids, attention_mask)]
    answers: list[list[int]] = [[] for _ in prompts]

    def feed(next_tokens: torch.Tensor) -> None:
        for answer, token in zip(answers, next_tokens.tolist()):
            answer.append(token)

    pad = model.config.pad_token_id or 0
    for _ in range(max_new_tokens):
        rows = [torch.cat([prompt, prompt.new_tensor(answer)]) for prompt, answer in zip(prompts, answers)]
        ids, mask = _right_pad(rows, pad)
        batch, hidden = model.splice_and_decode(ids, mask, None, images, image_sizes)  # hidden: (B, L, D)
        last = batch.attention_mask.shape[1] - 1 - batch.attention_mask.flip(1).argmax(dim=1)  # (B,)
        yield model.lm_head(hidden[torch.arange(len(rows)), last]), feed


def _right_pad(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(1, max(len(row) for row in rows))
    ids = rows[0].new_full((len(rows), length), pad)  # (B, S)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, : len(row)], mask[index, : len(row)] = row, 1
    return ids, mask


class LlavaQwenWithAlternatingAttnForCausalLM(LlavaQwenForCausalLM):
    """`llava_qwen_with_alternating_attn`: odd layers (except the last) attend within their own modality."""

    config_class = LlavaQwenAlternatingConfig
    config: LlavaQwenAlternatingConfig


class LlavaQwenWithAlternatingCrossAttnForCausalLM(LlavaQwenForCausalLM):
    """`llava_qwen_with_alternating_cross_attn`: gated cross-attention blocks, or cross-modal masks."""

    config_class = LlavaQwenAlternatingCrossConfig
    config: LlavaQwenAlternatingCrossConfig


# The three model types, registered with transformers' Auto classes when this module loads (every crossgraft function
# that loads a model imports it; `import crossgraft.llava.modeling` does it for a script of your own).
MODEL_CLASSES: dict[str, type[LlavaQwenForCausalLM]] = {
    LlavaQwenConfig.model_type: LlavaQwenForCausalLM,
    LlavaQwenAlternatingConfig.model_type: LlavaQwenWithAlternatingAttnForCausalLM,
    LlavaQwenAlternatingCrossConfig.model_type: LlavaQwenWithAlternatingCrossAttnForCausalLM,
}
for _model_class in MODEL_CLASSES.values():
    AutoConfig.register(_model_class.config_class.model_type, _model_class.config_class, exist_ok=True)
    AutoModelForCausalLM.register(_model_class.config_class, _model_class, exist_ok=True)
