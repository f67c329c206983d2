"""Trainable building blocks of AA-CLIP (DESIGN §3). Parameter names match the public checkpoints."""

from __future__ import annotations

from torch import nn

LEAKY_SLOPE = 0.01


class SimpleAdapter(nn.Module):
    """Linear (no bias) + LeakyReLU; its weight is `fc.0.weight` as in the public code."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_features, out_features, bias=False), nn.LeakyReLU(LEAKY_SLOPE))

    def forward(self, x):
        return self.fc(x)


class SimpleProj(nn.Module):
    """Linear (no bias), optionally followed by LeakyReLU: `fc.weight`, or `fc.0.weight` with `relu`."""

    def __init__(self, in_features: int, out_features: int, relu: bool = False) -> None:
        super().__init__()
        linear = nn.Linear(in_features, out_features, bias=False)
        self.fc = nn.Sequential(linear, nn.LeakyReLU(LEAKY_SLOPE)) if relu else linear

    def forward(self, x):
        return self.fc(x)


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform every weight matrix of `module` (the public code's adapter init)."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)
