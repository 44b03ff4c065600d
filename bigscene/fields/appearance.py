"""Per-image appearance codes (NeRF-W): one id space of global image ids shared by all blocks.

Test views have no trained code: use the mean code, or fit one on half of the test image and evaluate on
the other half, as NeRF-W evaluates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class AppearanceEmbedding(nn.Module):
    """Learned codes (num_images, dim) indexed by global image id; a negative id asks for the mean code."""

    def __init__(self, num_images: int, dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.dim = dim
        self.codes = nn.Parameter(torch.randn(num_images, dim) * init_std)

    def mean_code(self) -> torch.Tensor:
        """(dim,) the code for images not seen in training."""
        return self.codes.mean(dim=0)

    def forward(self, image_ids: torch.Tensor) -> torch.Tensor:
        """image_ids (N,) int -> codes (N, dim)."""
        ids = image_ids.long()
        known = ids >= 0
        codes = self.codes[ids.clamp(min=0)]
        if bool(known.all()):
            return codes
        return torch.where(known[:, None], codes, self.mean_code().expand_as(codes))


def fit_appearance_code(
    loss_of_code: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, steps: int = 200, lr: float = 1e-2
) -> torch.Tensor:
    """Optimise one code (dim,) from `init` to minimise `loss_of_code(code)` with Adam; the field stays fixed.

    `loss_of_code` renders the fitting half of a test image with the code and returns its colour loss.
    """
    code = init.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([code], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad(set_to_none=True)
        loss_of_code(code).backward()
        optimiser.step()
    return code.detach()


def half_image_mask(height: int, width: int) -> torch.Tensor:
    """(H * W,) bool, row-major: True on the left half (the pixels a test code is fitted on), False on the right."""
    columns = torch.arange(width) < width // 2
    return columns.expand(height, width).reshape(-1)
