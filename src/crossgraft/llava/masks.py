"""Attention masks of the decoder layers, built once per forward pass and shared by the layers that use them.

A mask is additive (0 where a query may attend to a key, the dtype's minimum where it may not), shape
(B, 1, Q, K), and works with both eager and sdpa attention. A padded query row that may attend to nothing gets
a row of minima: softmax then spreads evenly over the keys and stays finite (no NaN), and its output is never
learned from.
"""

from __future__ import annotations

import torch

RULES = ("causal", "within_modality", "cross_modality")


def allowed_keys(key_is_real: torch.Tensor, key_is_image: torch.Tensor, query_length: int, rule: str) -> torch.Tensor:
    """Boolean (B, 1, Q, K): may query q attend to key k? Queries are the last Q of the K positions.

    causal: k ≤ q and k is not padding.
    within_modality: causal AND k has q's modality (text↔text, image↔image).
    cross_modality: causal AND (k has the other modality OR k is q itself).
    """
    if rule not in RULES:
        raise ValueError(f"unknown attention rule {rule!r}; expected one of {', '.join(RULES)}")
    key_length = key_is_real.shape[1]
    past_length = key_length - query_length
    device = key_is_real.device
    query_positions = torch.arange(past_length, key_length, device=device)  # (Q,)
    key_positions = torch.arange(key_length, device=device)  # (K,)
    causal = key_positions[None, :] <= query_positions[:, None]  # (Q, K)
    allowed = causal[None] & key_is_real.bool()[:, None, :]  # (B, Q, K)
    if rule != "causal":
        query_is_image = key_is_image[:, past_length:, None]  # (B, Q, 1)
        same_modality = query_is_image == key_is_image[:, None, :]  # (B, Q, K)
        if rule == "within_modality":
            allowed = allowed & same_modality
        else:
            is_self = key_positions[None, :] == query_positions[:, None]  # (Q, K)
            allowed = allowed & (~same_modality | is_self[None])
    return allowed[:, None]  # (B, 1, Q, K)


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where allowed, the dtype's minimum elsewhere (finite, so fully masked rows cannot make NaN)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def layer_masks(
    key_is_real: torch.Tensor,
    key_is_image: torch.Tensor,
    query_length: int,
    rules: set[str],
    dtype: torch.dtype,
    attn_implementation: str | None = "sdpa",
) -> dict[str, torch.Tensor | None]:
    """One additive mask per rule the model's layers use.

    With sdpa, an unpadded, uncached causal layer gets None instead: sdpa then runs with is_causal=True and may
    use its flash kernel, so base layers cost what they cost in plain Qwen2.
    """
    text_only = not bool(key_is_image.any())
    masks: dict[str, torch.Tensor | None] = {}
    for rule in rules:
        # Within one modality, text-only input is plain causal attention: the same mask object, so the same
        # kernel, which makes `alternating` equal to base bit for bit on text.
        effective = "causal" if rule == "within_modality" and text_only else rule
        plain_causal = effective == "causal" and query_length == key_is_real.shape[1] and bool(key_is_real.all())
        if plain_causal and attn_implementation == "sdpa":
            masks[rule] = None
        else:
            masks[rule] = additive(allowed_keys(key_is_real, key_is_image, query_length, effective), dtype)
    return masks
