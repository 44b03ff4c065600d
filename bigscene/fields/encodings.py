"""The `Encoding` interface, its registry, and the small encodings: frequency (positional) and spherical harmonics.

Callers build encodings by name through `make_encoding`, so a fused kernel (Triton, tiny-cuda-nn) can register
itself under a new name and replace the plain PyTorch one without touching fields or renderers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from bigscene.errors import ConfigError


class Encoding(nn.Module, ABC):
    """Maps inputs (N, in_dim) to features (N, out_dim); differentiable in both inputs and parameters.

    Position encodings take points in [0, 1]^3, direction encodings unit vectors.
    """

    in_dim: int

    @property
    @abstractmethod
    def out_dim(self) -> int: ...

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


E = TypeVar("E", bound=type[Encoding])
_REGISTRY: dict[str, type[Encoding]] = {}


def register_encoding(name: str) -> Callable[[E], E]:
    """Class decorator: make an `Encoding` available to `make_encoding(name, ...)`."""

    def wrap(cls: E) -> E:
        _REGISTRY[name] = cls
        return cls

    return wrap


def make_encoding(name: str, **kwargs: Any) -> Encoding:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown encoding {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def encoding_names() -> list[str]:
    return sorted(_REGISTRY)


@register_encoding("frequency")
class FrequencyEncoding(Encoding):
    """NeRF positional encoding: x, sin(2^k pi x), cos(2^k pi x) for k < num_freqs."""

    def __init__(self, in_dim: int = 3, num_freqs: int = 6, include_input: bool = True) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.num_freqs = num_freqs
        self.include_input = include_input
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.in_dim * (2 * self.num_freqs + int(self.include_input))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (x[..., None] * self.freqs).flatten(-2)  # (N, in_dim * num_freqs)
        parts = [x] if self.include_input else []
        return torch.cat([*parts, torch.sin(scaled), torch.cos(scaled)], dim=-1)


@register_encoding("sh")
class SphericalHarmonics(Encoding):
    """Real spherical harmonics of unit directions up to `degree` - 1 (degree**2 outputs), as instant-ngp."""

    in_dim = 3

    def __init__(self, degree: int = 4) -> None:
        super().__init__()
        if not 1 <= degree <= 4:
            raise ConfigError(f"spherical harmonics degree {degree}: expected 1 to 4")
        self.degree = degree

    @property
    def out_dim(self) -> int:
        return self.degree**2

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        x, y, z = d.unbind(-1)
        out = [torch.full_like(x, 0.28209479177387814)]
        if self.degree > 1:
            out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
        if self.degree > 2:
            xx, yy, zz = x * x, y * y, z * z
            out += [
                1.0925484305920792 * x * y,
                -1.0925484305920792 * y * z,
                0.94617469575755997 * zz - 0.31539156525251999,
                -1.0925484305920792 * x * z,
                0.54627421529603959 * (xx - yy),
            ]
        if self.degree > 3:
            out += [
                0.59004358992664352 * y * (-3.0 * xx + yy),
                2.8906114426405538 * x * y * z,
                0.45704579946446572 * y * (1.0 - 5.0 * zz),
                0.3731763325901154 * z * (5.0 * zz - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * zz),
                1.4453057213202769 * z * (xx - yy),
                0.59004358992664352 * x * (-xx + 3.0 * yy),
            ]
        return torch.stack(out, dim=-1)
