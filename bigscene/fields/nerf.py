"""NeRF density field on the same encodings: density and colour, with appearance codes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bigscene.config import ModelConfig
from bigscene.fields.encodings import make_encoding
from bigscene.fields.mlp import mlp


@dataclass
class NeRFOutput:
    """Per-sample outputs of a radiance field."""

    density: torch.Tensor  # (S,) non-negative, per scene unit
    rgb: torch.Tensor  # (S, 3) in [0, 1]


class _TruncExp(torch.autograd.Function):
    """exp whose gradient is clamped at exp(15): instant-ngp's density activation."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


class NeRFField(nn.Module):
    """Density and colour over the box `aabb` (2, 3), normalised isotropically into the encoding's cube."""

    def __init__(self, config: ModelConfig, aabb: torch.Tensor) -> None:
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32)
        self.config = config
        self.register_buffer("centre", (aabb[0] + aabb[1]) / 2)  # (3,)
        self.register_buffer("scale", ((aabb[1] - aabb[0]) / 2).max())  # ()
        self.encoding = make_encoding(
            config.encoding,
            levels=config.hash_levels,
            features=config.hash_features,
            table_log2=config.hash_table_log2,
            base_resolution=config.base_resolution,
            finest_resolution=config.finest_resolution,
        )
        self.density_net = mlp(self.encoding.out_dim, config.hidden_dim, config.num_layers, 1 + config.feature_dim)
        self.dir_encoding = make_encoding("sh", degree=config.sh_degree)
        color_in = self.dir_encoding.out_dim + config.feature_dim + config.appearance_dim
        self.color_net = mlp(color_in, config.color_hidden_dim, config.color_layers, 3)

    def density_and_feature(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density (S,) and feature (S, F) at world positions x (S, 3); zero density outside the box."""
        p = (x - self.centre) / self.scale  # (S, 3) in [-1, 1] inside
        out = self.density_net(self.encoding((p + 1.0) / 2.0))
        inside = (p.abs() <= 1.0).all(dim=-1)
        return trunc_exp(out[:, 0].float()) * inside, out[:, 1:]

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """Density (S,) at world positions x (S, 3); the field callable samplers take."""
        return self.density_and_feature(x)[0]

    def forward(self, x: torch.Tensor, dirs: torch.Tensor, appearance: torch.Tensor | None = None) -> NeRFOutput:
        density, feature = self.density_and_feature(x)
        if appearance is None:
            appearance = x.new_zeros(x.shape[0], self.config.appearance_dim)
        rgb = torch.sigmoid(self.color_net(torch.cat([self.dir_encoding(dirs), feature, appearance], dim=-1)))
        return NeRFOutput(density=density, rgb=rgb)
