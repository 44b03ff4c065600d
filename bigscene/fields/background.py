"""Background for unbounded scenes: a small radiance field beyond each ray's far bound, and the sky.

Points are taken relative to the block's bounding sphere (centre, radius) and re-parametrised to a bounded
domain: NeRF++'s inverted sphere `(p / r, 1 / r)` or mip-NeRF 360's contraction
`p` inside the unit ball, `(2 - 1 / r) p / r` outside. The sky is a colour of the view direction (and the
image's appearance code) behind everything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bigscene.config import ModelConfig
from bigscene.errors import ConfigError
from bigscene.fields.encodings import make_encoding
from bigscene.fields.mlp import mlp
from bigscene.fields.nerf import NeRFOutput, trunc_exp


def inverted_sphere(p: torch.Tensor) -> torch.Tensor:
    """NeRF++: points p (S, 3) in units of the sphere radius -> (S, 4) = (unit direction, 1 / r), r >= 1."""
    r = p.norm(dim=-1, keepdim=True).clamp(min=1.0)
    return torch.cat([p / r, 1.0 / r], dim=-1)


def contract(p: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360: points p (S, 3) -> the ball of radius 2; the identity inside the unit ball."""
    r = p.norm(dim=-1, keepdim=True)
    return torch.where(r <= 1.0, p, (2.0 - 1.0 / r.clamp(min=1.0)) * p / r.clamp(min=1e-12))


class BackgroundField(nn.Module):
    """Density and colour of points beyond the foreground (`forward`), and the sky colour (`sky`)."""

    def __init__(self, config: ModelConfig, centre: torch.Tensor, radius: float) -> None:
        super().__init__()
        if config.background == "none":
            raise ConfigError("model.background=none: no background field to build")
        self.parametrisation = config.background
        self.appearance_dim = config.appearance_dim
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32))  # (3,)
        self.radius = float(radius)
        in_dim = 4 if config.background == "inverted_sphere" else 3
        self.encoding = make_encoding("frequency", in_dim=in_dim, num_freqs=config.background_freqs)
        hidden = config.background_hidden_dim
        self.density_net = mlp(self.encoding.out_dim, hidden, 2, 1 + hidden)
        self.dir_encoding = make_encoding("sh", degree=config.sh_degree)
        self.color_net = mlp(self.dir_encoding.out_dim + hidden + config.appearance_dim, hidden // 2, 1, 3)
        self.sky_net = mlp(self.dir_encoding.out_dim + config.appearance_dim, hidden // 2, 2, 3) if config.sky else None

    def parametrise(self, x: torch.Tensor) -> torch.Tensor:
        """World positions (S, 3) -> the bounded input of the encoding."""
        p = (x - self.centre) / self.radius
        return inverted_sphere(p) if self.parametrisation == "inverted_sphere" else contract(p) / 2.0

    def _appearance(self, n: int, like: torch.Tensor, appearance: torch.Tensor | None) -> torch.Tensor:
        return like.new_zeros(n, self.appearance_dim) if appearance is None else appearance

    def forward(self, x: torch.Tensor, dirs: torch.Tensor, appearance: torch.Tensor | None = None) -> NeRFOutput:
        """x (S, 3) world positions beyond the far bound, dirs (S, 3), appearance (S, A) -> density, rgb."""
        out = self.density_net(self.encoding(self.parametrise(x)))
        app = self._appearance(x.shape[0], x, appearance)
        rgb = torch.sigmoid(self.color_net(torch.cat([self.dir_encoding(dirs), F.relu(out[:, 1:]), app], dim=-1)))
        return NeRFOutput(density=trunc_exp(out[:, 0].float()), rgb=rgb)

    def sky(self, dirs: torch.Tensor, appearance: torch.Tensor | None = None) -> torch.Tensor:
        """Sky colour (N, 3) of ray directions (N, 3); black without a sky network."""
        if self.sky_net is None:
            return dirs.new_zeros(dirs.shape[0], 3)
        app = self._appearance(dirs.shape[0], dirs, appearance)
        return torch.sigmoid(self.sky_net(torch.cat([self.dir_encoding(dirs), app], dim=-1)))
