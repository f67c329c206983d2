"""Attention masks of the decoder layers, built once per forward pass and shared by the layers that use them.

Masks have shape (B, 1, Q, K): the queries are the last Q of the K positions (Q = K without a KV cache, Q = 1
for a cached decoding step), so a cached step sees exactly the keys its row would see in a full forward.
sdpa gets booleans (True = may attend), which keep their meaning under
autocast; eager gets additive floats (0 or the dtype's minimum). A query that may attend to nothing (a
padding position at the start of a left-padded row) attends to itself instead, so no softmax row is empty
and nothing becomes NaN; such positions are never learned from.
"""

from __future__ import annotations

from typing import Any

import torch

RULES = ("causal", "within_modality", "cross_modality")


def allowed_keys(
    key_is_real: torch.Tensor, key_is_image: torch.Tensor, rule: str, queries: int | None = None
) -> torch.Tensor:
    """Boolean (B, 1, Q, K): may query q attend to key k? key_is_real and key_is_image are (B, K); the queries
    are the last `queries` positions (default: all K).

    causal: k ≤ q and k is not padding.
    within_modality: causal AND k has q's modality (text↔text, image↔image).
    cross_modality: causal AND (k has the other modality OR k is q itself).
    """
    if rule not in RULES:
        raise ValueError(f"unknown attention rule {rule!r}; expected one of {', '.join(RULES)}")
    keys = key_is_real.shape[1]
    queries = keys if queries is None else queries
    key_positions = torch.arange(keys, device=key_is_real.device)  # (K,)
    query_positions = key_positions[keys - queries :]  # (Q,)
    causal = key_positions[None, :] <= query_positions[:, None]  # (Q, K): query rows, key columns
    is_self = key_positions[None, :] == query_positions[:, None]  # (Q, K)
    allowed = causal[None] & key_is_real.bool()[:, None, :]  # (B, Q, K)
    if rule != "causal":
        query_is_image = key_is_image[:, keys - queries :]  # (B, Q)
        same_modality = query_is_image[:, :, None] == key_is_image[:, None, :]  # (B, Q, K)
        if rule == "within_modality":
            allowed = allowed & same_modality
        else:
            allowed = allowed & (~same_modality | is_self[None])
    nothing_allowed = ~allowed.any(dim=-1, keepdim=True)  # (B, Q, 1)
    allowed = allowed | (nothing_allowed & is_self[None])
    return allowed[:, None]  # (B, 1, Q, K)


def effective_rule(rule: str, text_only: bool) -> str:
    """Within one modality, text-only input is plain causal attention: such layers get the causal rule, so the
    same mask and kernel, which makes `alternating` equal to base bit for bit on text."""
    return "causal" if rule == "within_modality" and text_only else rule


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where allowed, the dtype's minimum elsewhere (finite, unlike -inf)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def layer_masks(
    key_is_real: torch.Tensor,
    key_is_image: torch.Tensor,
    rules: set[str],
    dtype: torch.dtype,
    attn_implementation: str | None = "sdpa",
    queries: int | None = None,
) -> dict[str, torch.Tensor | None]:
    """One mask per rule the model's layers use: boolean for sdpa, additive in `dtype` for eager. The queries
    are the last `queries` of the (B, K) keys (default: all).

    With sdpa, an unpadded causal layer gets None instead: sdpa then runs with is_causal=True (or, for one
    query, over every key) and may use its flash kernel, so base layers cost what they cost in plain Qwen2.
    """
    keys = key_is_real.shape[1]
    queries = keys if queries is None else queries
    text_only = not bool(key_is_image.any())
    sdpa = attn_implementation in (None, "sdpa")
    masks: dict[str, torch.Tensor | None] = {}
    for rule in rules:
        effective = effective_rule(rule, text_only)
        plain_causal = effective == "causal" and bool(key_is_real.all()) and queries in (1, keys)
        if plain_causal and sdpa:
            masks[rule] = None
            continue
        allowed = allowed_keys(key_is_real, key_is_image, effective, queries)
        masks[rule] = allowed if sdpa else additive(allowed, dtype)
    return masks


def flex_block_masks(
    key_is_real: torch.Tensor, key_is_image: torch.Tensor, rules: set[str], queries: int | None = None
) -> dict[str, Any]:
    """The same rules as `allowed_keys`, as flex_attention BlockMasks (one per rule): blocks that no query may
    attend to are skipped by the kernel, so an alternating layer costs about what its allowed blocks cost, instead
    of a dense masked attention. key_is_real, key_is_image: (B, K); the queries are the last `queries` keys."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, keys = key_is_real.shape
    queries = keys if queries is None else queries
    offset = keys - queries
    real, image = key_is_real.bool(), key_is_image.bool()
    image_seen = torch.cumsum(real & image, dim=1)[:, offset:]  # (B, Q) real image keys up to the query
    text_seen = torch.cumsum(real & ~image, dim=1)[:, offset:]
    query_is_image = image[:, offset:]
    empty = {  # (B, Q): queries that may attend to nothing and attend to themselves instead (see allowed_keys)
        "causal": image_seen + text_seen == 0,
        "within_modality": torch.where(query_is_image, image_seen, text_seen) == 0,
        "cross_modality": (torch.where(query_is_image, text_seen, image_seen) == 0) & ~real[:, offset:],
    }
    text_only = not bool(image.any())

    def rule_mask(rule: str) -> Any:
        alone = empty[rule]

        def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            position = q + offset
            allowed = (kv <= position) & real[b, kv]
            if rule == "within_modality":
                allowed = allowed & (image[b, kv] == image[b, position])
            elif rule == "cross_modality":
                allowed = allowed & ((image[b, kv] != image[b, position]) | (kv == position))
            return allowed | (alone[b, q] & (kv == position))

        return create_block_mask(mask_mod, batch, None, queries, keys, device=key_is_real.device)

    built: dict[str, Any] = {}
    for effective in {effective_rule(rule, text_only) for rule in rules}:
        built[effective] = rule_mask(effective)
    return {rule: built[effective_rule(rule, text_only)] for rule in rules}
