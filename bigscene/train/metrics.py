"""Image metrics of validation renders, over the pixels a block renders: PSNR and SSIM."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: SSIM's Gaussian window (Wang et al. 2004): 11 x 11, sigma 1.5, constants for a data range of 1.
_WINDOW, _SIGMA, _C1, _C2 = 11, 1.5, 0.01**2, 0.03**2


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of colours pred, target (..., 3) in [0, 1]."""
    mse = F.mse_loss(pred.float(), target.float())
    return -10.0 * torch.log10(mse.clamp(min=1e-10))


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (H, W) of images (H, W, 3) in [0, 1], averaged over channels (zero padding at borders)."""
    x = torch.arange(_WINDOW, dtype=torch.float32, device=pred.device) - _WINDOW // 2
    g = torch.exp(-(x**2) / (2 * _SIGMA**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, _WINDOW, _WINDOW)

    def blur(img: torch.Tensor) -> torch.Tensor:
        return F.conv2d(img, window, padding=_WINDOW // 2, groups=3)

    a, b = pred.float().permute(2, 0, 1)[None], target.float().permute(2, 0, 1)[None]  # (1, 3, H, W)
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + _C1) * (2 * cov + _C2)
    den = (mu_a**2 + mu_b**2 + _C1) * (var_a + var_b + _C2)
    return (num / den).mean(dim=1)[0]


def masked_ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SSIM of images (H, W, 3) averaged over mask (H, W): pred's pixels outside the mask are taken from target,
    so windows at the mask's edge compare only what was rendered."""
    filled = torch.where(mask[..., None], pred.float(), target.float())
    return ssim_map(filled, target)[mask].mean()
