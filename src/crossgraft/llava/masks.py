"""Attention masks of the decoder layers, built once per forward pass and shared by the layers that use them.

Each rule is written once, as a mask function of (batch, query, key) indices (as transformers' `masking_utils`
writes its masks), composed from small parts with `and_masks` / `or_masks`; the dense boolean masks (sdpa), the
additive ones (eager) and flex_attention's BlockMasks are all rendered from that one definition.

Masks have shape (B, 1, Q, K): the queries are the last Q of the K positions (Q = K without a KV cache, Q = 1
for a cached decoding step), so a cached step sees exactly the keys its row would see in a full forward.
sdpa gets booleans (True = may attend), which keep their meaning under autocast; eager gets additive floats (0 or
the dtype's minimum). A query that may attend to nothing (a padding position at the start of a left-padded row)
attends to itself instead (`attend_to_self_when_alone`), so no softmax row is empty and nothing becomes NaN; such
positions are never learned from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from crossgraft.llava.configuration import ATTENTION_RULES

ROWS_PER_CHUNK = 1024  # query rows evaluated at once when a rule's empty rows are looked for (bounds memory)

# (batch, query, key) index tensors, broadcastable to each other -> bool of their broadcast shape: may that query
# attend to that key? Queries are numbered 0..Q-1; query q sits at position q + offset of the K keys.
MaskFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Segments:
    """What the rules look at: which of the K keys are real tokens and which are image tokens, and how many of
    them (the last `queries`) are queries."""

    key_is_real: torch.Tensor  # (B, K) bool
    key_is_image: torch.Tensor  # (B, K) bool
    queries: int

    @classmethod
    def of(cls, key_is_real: torch.Tensor, key_is_image: torch.Tensor, queries: int | None = None) -> Segments:
        """Segments from (B, K) masks of real and image keys; the queries are the last `queries` keys (default: all)."""
        keys = key_is_real.shape[1]
        return cls(key_is_real.bool(), key_is_image.bool(), keys if queries is None else queries)

    @property
    def batch(self) -> int:
        """B."""
        return self.key_is_real.shape[0]

    @property
    def keys(self) -> int:
        """K."""
        return self.key_is_real.shape[1]

    @property
    def offset(self) -> int:
        """The position of query 0 among the keys."""
        return self.keys - self.queries

    @property
    def query_positions(self) -> torch.Tensor:
        """(Q,): the position of each query among the keys. (A tensor, not `q + offset`: the compiled flex kernels
        then see no Python integer that changes with the sequence length.)"""
        return torch.arange(self.offset, self.keys, device=self.key_is_real.device)

    @property
    def text_only(self) -> bool:
        """No key is an image token."""
        return not bool(self.key_is_image.any())


# ------------------------------------------------------------------------------------------ the parts
def and_masks(*functions: MaskFunction) -> MaskFunction:
    """Allowed where every function allows."""

    def mask(b: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        allowed = functions[0](b, q, k)
        for function in functions[1:]:
            allowed = allowed & function(b, q, k)
        return allowed

    return mask


def or_masks(*functions: MaskFunction) -> MaskFunction:
    """Allowed where any function allows."""

    def mask(b: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        allowed = functions[0](b, q, k)
        for function in functions[1:]:
            allowed = allowed | function(b, q, k)
        return allowed

    return mask


def causal(segments: Segments) -> MaskFunction:
    """k ≤ q, and k is a real token (not padding)."""
    real, position = segments.key_is_real, segments.query_positions
    return lambda b, q, k: (k <= position[q]) & real[b, k]


def same_modality(segments: Segments) -> MaskFunction:
    """k has q's modality (text↔text, image↔image)."""
    image, position = segments.key_is_image, segments.query_positions
    return lambda b, q, k: image[b, k] == image[b, position[q]]


def other_modality_or_self(segments: Segments) -> MaskFunction:
    """k has the other modality, or k is q itself."""
    image, position = segments.key_is_image, segments.query_positions
    return lambda b, q, k: (image[b, k] != image[b, position[q]]) | (k == position[q])


RULE_PARTS: dict[str, tuple[Callable[[Segments], MaskFunction], ...]] = {
    "causal": (causal,),
    "within_modality": (causal, same_modality),
    "cross_modality": (causal, other_modality_or_self),
}


def rule_function(rule: str, segments: Segments) -> MaskFunction:
    """The mask function of one rule, without the attend-to-self fallback."""
    if rule not in ATTENTION_RULES:
        raise ValueError(f"unknown attention rule {rule!r}; expected one of {', '.join(ATTENTION_RULES)}")
    return and_masks(*(part(segments) for part in RULE_PARTS[rule]))


def render(
    function: MaskFunction, segments: Segments, first_query: int = 0, last_query: int | None = None
) -> torch.Tensor:
    """The dense boolean (B, Q', K) of `function` for queries first_query..last_query-1 (default: all Q)."""
    device = segments.key_is_real.device
    last_query = segments.queries if last_query is None else last_query
    b = torch.arange(segments.batch, device=device)[:, None, None]  # (B, 1, 1)
    q = torch.arange(first_query, last_query, device=device)[None, :, None]  # (1, Q', 1)
    k = torch.arange(segments.keys, device=device)[None, None, :]  # (1, 1, K)
    return function(b, q, k).expand(segments.batch, last_query - first_query, segments.keys)


def attend_to_self_when_alone(function: MaskFunction, segments: Segments) -> MaskFunction:
    """`function`, where a query it lets attend to nothing attends to itself instead (no empty softmax row)."""
    alone = torch.cat(  # (B, Q): rows without any allowed key, found a chunk of rows at a time
        [
            ~render(function, segments, first, min(first + ROWS_PER_CHUNK, segments.queries)).any(dim=-1)
            for first in range(0, segments.queries, ROWS_PER_CHUNK)
        ],
        dim=1,
    )
    position = segments.query_positions
    return or_masks(function, lambda b, q, k: alone[b, q] & (k == position[q]))


def effective_rule(rule: str, text_only: bool) -> str:
    """Within one modality, text-only input is plain causal attention: such layers get the causal rule, so the
    same mask and kernel, which makes `alternating` equal to base bit for bit on text."""
    return "causal" if rule == "within_modality" and text_only else rule


# -------------------------------------------------------------------------------------------- rendered
def allowed_keys(
    key_is_real: torch.Tensor, key_is_image: torch.Tensor, rule: str, queries: int | None = None
) -> torch.Tensor:
    """Boolean (B, 1, Q, K): may query q attend to key k under `rule` (with the attend-to-self fallback)?
    key_is_real and key_is_image are (B, K); the queries are the last `queries` positions (default: all K)."""
    segments = Segments.of(key_is_real, key_is_image, queries)
    function = attend_to_self_when_alone(rule_function(rule, segments), segments)
    return render(function, segments)[:, None]  # (B, 1, Q, K)


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
    segments = Segments.of(key_is_real, key_is_image, queries)
    sdpa = attn_implementation in (None, "sdpa")
    masks: dict[str, torch.Tensor | None] = {}
    for rule in rules:
        effective = effective_rule(rule, segments.text_only)
        unpadded = bool(segments.key_is_real.all()) and segments.queries in (1, segments.keys)
        if effective == "causal" and unpadded and sdpa:
            masks[rule] = None
            continue
        allowed = allowed_keys(key_is_real, key_is_image, effective, queries)
        masks[rule] = allowed if sdpa else additive(allowed, dtype)
    return masks


def flex_mask_mod(function: MaskFunction) -> Callable[..., torch.Tensor]:
    """A mask function as flex_attention's mask_mod (b, h, q, kv): every head follows the same rule."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return function(b, q, kv)

    return mask_mod


def flex_block_masks(
    key_is_real: torch.Tensor, key_is_image: torch.Tensor, rules: set[str], queries: int | None = None
) -> dict[str, Any]:
    """The same rules as `allowed_keys`, as flex_attention BlockMasks (one per rule): blocks that no query may
    attend to are skipped by the kernel, so an alternating layer costs about what its allowed blocks cost, instead
    of a dense masked attention. key_is_real, key_is_image: (B, K); the queries are the last `queries` keys."""
    from torch.nn.attention.flex_attention import create_block_mask

    segments = Segments.of(key_is_real, key_is_image, queries)
    built: dict[str, Any] = {}
    for effective in {effective_rule(rule, segments.text_only) for rule in rules}:
        function = attend_to_self_when_alone(rule_function(effective, segments), segments)
        built[effective] = create_block_mask(
            flex_mask_mod(function), segments.batch, None, segments.queries, segments.keys, device=key_is_real.device
        )
    return {rule: built[effective_rule(rule, segments.text_only)] for rule in rules}
