"""Trainable building blocks of AA-CLIP (docs/aa-clip.md). Parameter names match the public checkpoints."""

from __future__ import annotations

import torch
from torch import nn

from crossgraft.errors import ShapeError

LEAKY_SLOPE = 0.01


class SimpleAdapter(nn.Module):
    """Linear (no bias) + LeakyReLU; its weight is `fc.0.weight` as in the public code."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_features, out_features, bias=False), nn.LeakyReLU(LEAKY_SLOPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        return self.fc(x)


class SimpleProj(nn.Module):
    """Linear (no bias), optionally followed by LeakyReLU: `fc.weight`, or `fc.0.weight` with `relu`."""

    def __init__(self, in_features: int, out_features: int, relu: bool = False) -> None:
        super().__init__()
        linear = nn.Linear(in_features, out_features, bias=False)
        self.fc = nn.Sequential(linear, nn.LeakyReLU(LEAKY_SLOPE)) if relu else linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        return self.fc(x)


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform every weight matrix of `module` (the public code's adapter init)."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class CrossAttention(nn.Module):
    """Multi-head cross-attention (seed 003 §3.2): queries from one modality, keys/values from the other.

    q/k/v/out are Linear with bias (Xavier weights, zero biases); softmax(QKᵀ/√d_head)V with dropout on the
    attention weights. The inner width is the context width, so kdim/vdim may differ from the query width.
    """

    residual_weight: torch.Tensor  # w of `x + w · out`: a parameter or a fixed (unsaved) buffer

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        heads: int = 8,
        dropout: float = 0.1,
        residual_weight: float = 0.1,
        learnable_weight: bool = False,
        name: str = "cross-attention",
    ) -> None:
        super().__init__()
        if context_dim % heads:
            raise ShapeError(
                f"{name}: width {context_dim} is not divisible by {heads} heads (set by --cross_attn_heads; the "
                "width is the CLIP embedding width, set by --clip)"
            )
        self.name = name
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(query_dim, context_dim)
        self.k_proj = nn.Linear(context_dim, context_dim)
        self.v_proj = nn.Linear(context_dim, context_dim)
        self.out_proj = nn.Linear(context_dim, query_dim)
        for linear in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        # w of `x + w · out`: a parameter with --learnable_cross_attn_weight, else a fixed (unsaved) buffer
        weight = torch.tensor(float(residual_weight))
        if learnable_weight:
            self.residual_weight = nn.Parameter(weight)
        else:
            self.register_buffer("residual_weight", weight, persistent=False)

    def check_shapes(self, queries: torch.Tensor, context: torch.Tensor) -> None:
        """Both inputs are (B, L, D) with the widths the module was built for, one context per query sequence."""
        query_width, context_width = self.q_proj.in_features, self.k_proj.in_features
        if queries.dim() != 3 or queries.shape[-1] != query_width:
            raise ShapeError(
                f"{self.name}: queries {tuple(queries.shape)}, but the module was built for (B, L, width "
                f"{query_width}): the encoder width of the --clip it was built with"
            )
        if context.dim() != 3 or context.shape[-1] != context_width:
            raise ShapeError(
                f"{self.name}: context {tuple(context.shape)}, but the module was built for (B, N, width "
                f"{context_width}): the embedding width of the --clip it was built with"
            )
        if queries.shape[0] != context.shape[0]:  # shape[0], not len(): exportable with a dynamic batch
            raise ShapeError(
                f"{self.name}: queries {tuple(queries.shape)} and context {tuple(context.shape)} differ in batch "
                "size: one context per image is needed"
            )

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)  # (B, H, L, d)

    def _project(self, queries: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.check_shapes(queries, context)
        return self._split(self.q_proj(queries)), self._split(self.k_proj(context)), self._split(self.v_proj(context))

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        batch, heads, length, head_dim = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, heads * head_dim))  # (B, L, Dq)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """queries (B, Lq, Dq), context (B, Lc, Dc) -> (B, Lq, Dq), through the fused attention kernel."""
        q, k, v = self._project(queries, context)
        dropout = self.dropout if self.training else 0.0
        return self._merge(nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout))

    def forward_with_attention(self, queries: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same output and the attention weights (B, H, Lq, Lc), written out (for attention maps)."""
        q, k, v = self._project(queries, context)
        weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        out = nn.functional.dropout(weights, self.dropout, self.training) @ v
        return self._merge(out), weights
