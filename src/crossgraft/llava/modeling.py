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

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2MLP, Qwen2RMSNorm, Qwen2RotaryEmbedding

from crossgraft.errors import ShapeError
from crossgraft.llava.configuration import (
    IGNORE_INDEX,
    LlavaConfigError,
    LlavaQwenAlternatingConfig,
    LlavaQwenAlternatingCrossConfig,
    LlavaQwenConfig,
)
from crossgraft.llava.masks import additive, layer_masks
from crossgraft.llava.vision import SigLipVisionTower, build_projector

SUPPORTED_ATTENTION = ("eager", "sdpa")


def check_attention_implementation(name: str | None) -> None:
    if name in (None, *SUPPORTED_ATTENTION):
        return
    raise LlavaConfigError(
        f"attn_implementation {name!r} is not supported: the alternating layers need an arbitrary per-layer mask "
        "(text↔text, image↔image), which flash-attention's causal/varlen kernels cannot express. "
        "Use 'sdpa' (default) or 'eager'."
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

    def forward(
        self,
        hidden_states: torch.Tensor,
        image_context: torch.Tensor,
        image_context_mask: torch.Tensor,
        text_token_mask: torch.Tensor,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        context_length = image_context.shape[1]
        context = self.context_norm(image_context)
        query = self.q_proj(self.attn_norm(hidden_states)).view(batch, length, self.num_heads, self.head_dim)
        key = self.k_proj(context).view(batch, context_length, self.num_heads, self.head_dim)
        value = self.v_proj(context).view(batch, context_length, self.num_heads, self.head_dim)
        mask = additive(image_context_mask[:, None, None, :], query.dtype)  # (B, 1, 1, M)
        attended = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask
        )  # (B, H, L, head_dim)
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
    _supports_flex_attn = False

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
        return self.config.attention_pattern if layer_index in self.config.alternating_layers else "causal"

    # ------------------------------------------------------------------------------------------- images
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) pixels → (N, T, D) LM-width features, T = patches (+1 newline for 'unpad' merges)."""
        tune_tower = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(tune_tower and torch.is_grad_enabled()):
            patch_features = self.vision_tower(images)  # (N, P, W)
        features = self.mm_projector(patch_features.to(self.mm_projector[0].weight.dtype))  # (N, P, D)
        if "unpad" in self.config.mm_patch_merge_type:
            newline = self.image_newline.to(features.dtype).expand(features.shape[0], 1, -1)  # (N, 1, D)
            features = torch.cat([features, newline], dim=1)
        return features

    def prepare_multimodal_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> MultimodalInputs:
        """Splice image features in at the `<image>` placeholders, then re-pad the batch.

        Images are consumed in order: the k-th placeholder of the batch (row by row) takes images[k].
        """
        config = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        placeholder = input_ids == config.image_token_index  # (B, S)
        placeholder_count = int(placeholder.sum())
        image_count = 0 if images is None else images.shape[0]
        if placeholder_count != image_count:
            raise ShapeError(
                f"the batch has {placeholder_count} <image> placeholders but {image_count} images were given"
            )
        text_embeds = self.embed_tokens(input_ids.clamp(min=0))  # (B, S, D); placeholder rows are replaced
        image_features = (  # (N, T, D)
            self.encode_images(images) if images is not None and image_count else text_embeds.new_zeros(0, 0, 0)
        )

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
                features = image_features[next_image]  # (T, D)
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
        return self._pad(sequences, sequence_labels, sequence_is_image, contexts, with_labels=labels is not None)

    def _pad(
        self,
        sequences: list[torch.Tensor],
        sequence_labels: list[torch.Tensor | None],
        sequence_is_image: list[torch.Tensor],
        contexts: list[torch.Tensor],
        with_labels: bool,
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
            span = slice(length - n, length) if self.config.tokenizer_padding_side == "left" else slice(0, n)
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
    ) -> BaseModelOutputWithPast:
        """Run the decoder on already spliced embeddings: inputs_embeds (B, L, D); attention_mask,
        position_ids and key_is_image (B, L). There is no KV cache (see `generate`)."""
        check_attention_implementation(self.config._attn_implementation)
        query_is_text = ~key_is_image  # (B, L)

        rules = {self.layer_rule(i) for i in range(len(self.layers))}
        masks = layer_masks(  # (B, 1, L, L) each, or None for a plain causal sdpa layer
            attention_mask, key_is_image, rules, inputs_embeds.dtype, self.config._attn_implementation
        )
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for i, decoder_layer in enumerate(self.layers):
            if str(i) in self.xattn and image_context is not None:
                hidden_states = self.xattn[str(i)](hidden_states, image_context, image_context_mask, query_is_text)
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=masks[self.layer_rule(i)],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states)


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
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        if not isinstance(value, nn.Embedding):
            raise LlavaConfigError(f"input embeddings must be an nn.Embedding, got {type(value).__name__}")
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """input_ids (B, S) with `<image>` placeholders (-200), images (N, 3, H, W) in placeholder order.
        Other keyword arguments (num_items_in_batch from the Trainer) go to the loss. There is no KV cache."""
        if kwargs.pop("past_key_values", None) is not None:
            raise NotImplementedError("a KV cache is not supported; generate() re-runs the prompt at every step")
        kwargs.pop("use_cache", None)
        batch, hidden_states = self._splice_and_decode(input_ids, attention_mask, labels, images)
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)  # (B, L, vocab)
        loss = None
        if batch.labels is not None:
            loss = self.loss_function(logits=logits, labels=batch.labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def _splice_and_decode(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        images: torch.Tensor | None,
    ) -> tuple[MultimodalInputs, torch.Tensor]:
        """The spliced batch and the decoder's last hidden states (B, L, D)."""
        batch = self.model.prepare_multimodal_inputs(input_ids, attention_mask, labels, images)
        hidden_states = self.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            key_is_image=batch.image_token_mask,
            image_context=batch.image_context,
            image_context_mask=batch.image_context_mask,
        ).last_hidden_state
        return batch, hidden_states

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> torch.Tensor:
        """Greedy decoding; returns the new tokens (B, T), pad_token_id after each row's end.

        There is no KV cache: every step re-runs the whole prompt, so each variant's attention rule (and the
        gated blocks' image context) applies to the new tokens exactly as in training. Meant for evaluating
        short answers; long generations are slow.
        """
        eos = eos_token_id if eos_token_id is not None else self.config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        pad = pad_token_id if pad_token_id is not None else (self.config.pad_token_id or 0)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompts = [row[mask.bool()] for row, mask in zip(input_ids, attention_mask)]
        answers: list[list[int]] = [[] for _ in prompts]
        finished = [False] * len(prompts)
        for _ in range(max_new_tokens):
            rows = [torch.cat([prompt, prompt.new_tensor(answer)]) for prompt, answer in zip(prompts, answers)]
            ids, mask = _right_pad(rows, pad)
            batch, hidden = self._splice_and_decode(ids, mask, None, images)  # hidden: (B, L, D)
            last = batch.attention_mask.shape[1] - 1 - batch.attention_mask.flip(1).argmax(dim=1)  # (B,)
            next_tokens = self.lm_head(hidden[torch.arange(len(rows)), last]).argmax(dim=-1).tolist()  # (B,)
            for index, token in enumerate(next_tokens):
                if not finished[index]:
                    answers[index].append(token)
                    finished[index] = token in eos_ids
            if all(finished):
                break
        return _right_pad([input_ids.new_tensor(answer) for answer in answers], pad)[0]


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
