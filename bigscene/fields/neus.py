"""NeuS SDF field: encoding + MLP to an SDF and a feature vector, a colour network, and the inverse std s.

Positions are world (scene) units. The field normalises them isotropically into the cube [-1, 1]^3 around its
box, so its SDF stays in world units (|grad| = 1 in the world) whatever the box's aspect ratio. SDF, normals
and the eikonal term are computed in float32 even under autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bigscene.config import ModelConfig
from bigscene.errors import ConfigError
from bigscene.fields.encodings import make_encoding
from bigscene.fields.mlp import linear_layers, mlp

#: unit offsets of central finite differences: +x, +y, +z, -x, -y, -z.
_FD_DIRS = torch.cat([torch.eye(3), -torch.eye(3)])


@dataclass
class NeuSOutput:
    """Per-sample outputs of a NeuS field."""

    sdf: torch.Tensor  # (S,) float32, world units
    gradients: torch.Tensor  # (S, 3) float32 d sdf / d x, for the eikonal term
    normals: torch.Tensor  # (S, 3) unit gradients
    rgb: torch.Tensor  # (S, 3) in [0, 1]
    inv_s: torch.Tensor  # () NeuS inverse standard deviation s


class NeuSField(nn.Module):
    """NeuS on a multi-resolution encoding over the box `aabb` (2, 3) (the block's outer box)."""

    def __init__(self, config: ModelConfig, aabb: torch.Tensor) -> None:
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32)
        self.config = config
        self.register_buffer("centre", (aabb[0] + aabb[1]) / 2)  # (3,)
        self.register_buffer("scale", ((aabb[1] - aabb[0]) / 2).max())  # () half-extent of the enclosing cube
        self.encoding = make_encoding(
            config.encoding,
            levels=config.hash_levels,
            features=config.hash_features,
            table_log2=config.hash_table_log2,
            base_resolution=config.base_resolution,
            finest_resolution=config.finest_resolution,
        )
        self.sdf_net = mlp(
            3 + self.encoding.out_dim,
            config.hidden_dim,
            config.num_layers,
            1 + config.feature_dim,
            nn.Softplus(beta=100),
        )
        self.dir_encoding = make_encoding("sh", degree=config.sh_degree)
        color_in = 3 + 3 + self.dir_encoding.out_dim + config.feature_dim + config.appearance_dim
        self.color_net = mlp(color_in, config.color_hidden_dim, config.color_layers, 3)
        self.variance = nn.Parameter(torch.tensor(config.init_variance))
        ground = (aabb[0, 2] + config.init_ground_height * (aabb[1, 2] - aabb[0, 2]) - self.centre[2]) / self.scale
        geometric_init(self.sdf_net, config.geometric_init, config.init_radius, float(ground))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """World positions (S, 3) -> the field's cube [-1, 1]^3."""
        return (x - self.centre) / self.scale

    def inv_s(self) -> torch.Tensor:
        return torch.exp(self.variance * 10.0).clamp(1e-6, 1e6)

    def sdf_and_feature(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SDF (S,) in world units and feature (S, feature_dim) at world positions x (S, 3), in float32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            p = self.normalise(x.float())  # (S, 3)
            h = torch.cat([p, self.encoding((p + 1.0) / 2.0)], dim=-1)
            out = self.sdf_net(h)  # (S, 1 + F)
            return out[:, 0] * self.scale, out[:, 1:]

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """SDF (S,) at world positions x (S, 3); the field callable samplers take."""
        return self.sdf_and_feature(x)[0]

    def geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SDF (S,), feature (S, F) and gradient (S, 3) at x (S, 3), by autograd or central differences.

        The gradient stays differentiable (for the eikonal term) while grad mode is on.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if self.config.normals == "finite_difference":
                return self._geometry_fd(x)
            create_graph = torch.is_grad_enabled()  # keep the graph only where the caller trains through it
            with torch.enable_grad():
                x = x if x.requires_grad else x.detach().requires_grad_(True)
                sdf, feature = self.sdf_and_feature(x)
                (grad,) = torch.autograd.grad(sdf, x, torch.ones_like(sdf), create_graph=create_graph)
            if not create_graph:  # evaluation: hand back no graph
                sdf, feature = sdf.detach(), feature.detach()
            return sdf, feature, grad

    def _geometry_fd(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, h = x.shape[0], self.config.fd_step
        shifted = (x[None] + h * _FD_DIRS.to(x)[:, None]).reshape(-1, 3)  # (6 S, 3)
        sdf_all, feature_all = self.sdf_and_feature(torch.cat([x, shifted]))  # one pass over 7 S points
        plus, minus = sdf_all[n:].view(2, 3, n)
        grad = ((plus - minus) / (2.0 * h)).T  # (S, 3)
        return sdf_all[:n], feature_all[:n], grad

    def forward(self, x: torch.Tensor, dirs: torch.Tensor, appearance: torch.Tensor | None = None) -> NeuSOutput:
        """x (S, 3) world positions, dirs (S, 3) unit ray directions, appearance (S, A) codes (zeros if None)."""
        sdf, feature, grad = self.geometry(x)
        normals = F.normalize(grad, dim=-1)
        if appearance is None:
            appearance = x.new_zeros(x.shape[0], self.config.appearance_dim)
        h = torch.cat([self.normalise(x), normals, self.dir_encoding(dirs), feature, appearance], dim=-1)
        rgb = torch.sigmoid(self.color_net(h))
        return NeuSOutput(sdf=sdf, gradients=grad, normals=normals, rgb=rgb, inv_s=self.inv_s())


def eikonal_loss(gradients: torch.Tensor) -> torch.Tensor:
    """Mean of (|grad sdf| - 1)^2 over gradients (S, 3), in float32."""
    return ((gradients.float().norm(dim=-1) - 1.0) ** 2).mean()


def geometric_init(net: nn.Sequential, kind: str, radius: float, ground: float) -> None:
    """Initialise an SDF network (input: 3 coordinates then encoding features; output 0: SDF) to a shape.

    Geometric init in the spirit of IDR/NeuS, made accurate for narrow networks: the encoding inputs are
    silenced and the hidden biases zeroed, so the SDF output is (nearly) linear in `|p|` (sphere: first-layer
    rows are unit directions spread evenly over the sphere, hidden layers identity, so the units sum to a
    quadrature of `|p|`) or in `p_z` (plane: random first-layer weights on `p_z + 4 - ground > 0`, random
    hidden layers). A least-squares fit of that line then sets the output layer to `|p| - radius` (sphere),
    `radius - |p|` (inside_out, cameras inside) or `p_z - ground` (plane). The feature outputs stay random.
    """
    layers = linear_layers(net)
    if len(layers) < 2:
        raise ConfigError("geometric init needs an SDF network with at least one hidden layer")
    first, hidden, last = layers[0], layers[1:-1], layers[-1]
    width = first.out_features
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers[:-1]:
            nn.init.zeros_(layer.bias)
        first.weight[:, 3:] = 0.0
        if kind == "plane":
            std = math.sqrt(2.0 / width)
            first.weight[:, :2] = 0.0
            first.weight[:, 2] = torch.randn(width, generator=generator).abs() * std
            first.bias.copy_(first.weight[:, 2] * (4.0 - ground))
            for layer in hidden:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
            probe = torch.rand(4096, 3, generator=generator) * 2.0 - 1.0  # (M, 3) in the cube
            line = probe[:, 2]
        else:
            first.weight[:, :3] = fibonacci_sphere(width)
            for layer in hidden:
                layer.weight.copy_(torch.eye(width))
            probe = F.normalize(torch.randn(4096, 3, generator=generator), dim=-1)
            probe = probe * torch.linspace(0.05, 1.0, 4096)[:, None]
            line = probe.norm(dim=-1)
        last.weight[0] = 1.0 / width + 1e-4 * torch.randn(last.in_features, generator=generator)
        last.bias[0] = 0.0
        out = _first_output(net, probe)
        design = torch.stack([line, torch.ones_like(line)], dim=-1)  # (M, 2)
        slope, intercept = torch.linalg.lstsq(design, out[:, None]).solution[:, 0].tolist()
        sign, offset = {"sphere": (1.0, -radius), "inside_out": (-1.0, radius), "plane": (1.0, -ground)}[kind]
        last.weight[0] *= sign / slope
        last.bias[0] = -sign * intercept / slope + offset


def fibonacci_sphere(n: int) -> torch.Tensor:
    """(n, 3) unit vectors spread evenly over the sphere (golden-angle spiral)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    r = (1.0 - z * z).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1).float()


def _first_output(net: nn.Sequential, p: torch.Tensor) -> torch.Tensor:
    """The network's first output at coordinates p (M, 3), encoding inputs zero."""
    in_dim = linear_layers(net)[0].in_features
    return net(torch.cat([p, p.new_zeros(p.shape[0], in_dim - 3)], dim=-1))[:, 0]
