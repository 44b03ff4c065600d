"""A plain fully connected network: the building block of every field's heads."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int, hidden_dim: int, num_hidden: int, out_dim: int, activation: nn.Module | None = None
) -> nn.Sequential:
    """`num_hidden` hidden layers of `hidden_dim` units with `activation` (ReLU by default), then a linear output."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_hidden):
        layers += [nn.Linear(width, hidden_dim), activation if activation is not None else nn.ReLU()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def linear_layers(net: nn.Sequential) -> list[nn.Linear]:
    return [m for m in net if isinstance(m, nn.Linear)]
