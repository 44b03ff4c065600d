"""The LightningModule of one block: losses, schedules, adaptive batch, validation renders and metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pytorch_lightning import LightningModule
from torch import nn

from bigscene.config import Config
from bigscene.errors import BigsceneError
from bigscene.fields import eikonal_loss
from bigscene.render import FieldRender, Rays
from bigscene.train.losses import manhattan_loss, psnr_from_mse, rgb_loss, sfm_loss, sky_loss
from bigscene.train.metrics import masked_ssim, psnr
from bigscene.train.model import BlockModel
from bigscene.train.optim import BatchSizer, cos_anneal_ratio, lr_factor
from bigscene.train.views import ValView

#: Validation renders are shown dimmed where the block renders nothing (the photo shows through).
_DIM = 0.25


class TrainingDiverged(BigsceneError):
    """The loss or the weights became non-finite: the block stops, its last good checkpoint stays."""


class BlockModule(LightningModule):
    """Trains a BlockModel on a block's ray batches (see RayStream) and validates on held-out views.

    sfm_points: (P, 3) SfM points inside the block's outer box, for the weak surface term.
    """

    def __init__(
        self,
        model: BlockModel,
        config: Config,
        sfm_points: torch.Tensor,
        sizer: BatchSizer,
        ray_count: int,
        block_id: str,
        fingerprint: str,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = config.train
        self.stratified = config.sampler.stratified
        self.register_buffer("sfm_points", sfm_points.float(), persistent=False)
        # the Manhattan frame's angle (radians); always present, so checkpoints load whether the prior is on or off
        self.use_manhattan = self.cfg.manhattan_weight > 0 and model.is_neus
        self.manhattan_angle = nn.Parameter(torch.zeros(()), requires_grad=self.use_manhattan)
        self.sizer = sizer
        self.ray_count = ray_count
        self.block_id = block_id
        self.fingerprint = fingerprint
        self.last_samples = 0  # samples of the latest training step, for throughput
        self.val_images: list[tuple[str, np.ndarray]] = []  # (view name, (H, 2 W, 3) uint8 render | photo)
        self.validated_at = -1  # global step of the latest validation

    def on_fit_start(self) -> None:
        if self.cfg.surface_cache:
            self.model.attach_cache(self.ray_count)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        cfg = self.cfg
        rays = Rays.from_nearfar(batch["origins"], batch["dirs"], batch["near_far"], batch["image_id"])
        target = batch["rgb"].float() / 255.0  # (N, 3)
        out = self.model.render(
            rays,
            stratified=self.stratified,
            ray_ids=batch["ray_id"] if cfg.surface_cache else None,
            cos_anneal_ratio=cos_anneal_ratio(self.global_step, cfg.cos_anneal_steps),
        )
        terms = self.loss_terms(rays, out, target)
        loss = sum(weight * value for weight, value in terms.values())
        # every DDP rank must stop together, or the others would wait for its gradients for ever
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            parts = ", ".join(f"{name}={float(value.detach()):.4g}" for name, (_, value) in terms.items())
            raise TrainingDiverged(
                f"block {self.block_id}: the loss became {float(loss.detach())} at step {self.global_step} ({parts})"
            )
        self.last_samples = len(out.samples)
        self.sizer.update(len(rays), len(out.samples))
        self.log("train/loss", loss, prog_bar=True)
        for name, (_, value) in terms.items():
            self.log(f"train/{name}", value)
        self.log("train/psnr", psnr_from_mse(((out.rgb.float() - target) ** 2).mean()), prog_bar=True)
        self.log("train/rays", float(len(rays)))
        self.log("train/samples_per_ray", len(out.samples) / max(1, len(rays)))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        if out.inv_s is not None:
            self.log("train/inv_s", out.inv_s.detach().float())
        return loss

    def loss_terms(self, rays: Rays, out: FieldRender, target: torch.Tensor) -> dict[str, tuple[float, torch.Tensor]]:
        """The step's loss terms as name -> (weight, value): colour, and where enabled eikonal, SfM surface,
        sky and Manhattan terms."""
        cfg, model = self.cfg, self.model
        terms = {"rgb": (1.0, rgb_loss(out.rgb, target, cfg.rgb_loss, cfg.huber_delta))}
        if out.gradients is not None and cfg.eikonal_weight:
            terms["eikonal"] = (cfg.eikonal_weight, eikonal_loss(out.gradients))
        if model.is_neus and cfg.sfm_weight and len(self.sfm_points):
            points = self.sfm_points[torch.randint(len(self.sfm_points), (cfg.sfm_points,), device=self.device)]
            terms["sfm"] = (cfg.sfm_weight, sfm_loss(model.field.sdf(points), model.field.scale))
        sky = rays.near >= rays.far  # (N,) the partition's sky rays: no foreground segment
        if cfg.sky_weight and model.background is not None and bool(sky.any()):
            sky_rays = model.bounded(rays[sky])
            samples = model.sampler_config.background_samples
            terms["sky"] = (cfg.sky_weight, sky_loss(model.background, sky_rays, model.codes(sky_rays), samples))
        if self.use_manhattan and out.foreground.normals is not None:
            fg = out.foreground
            terms["manhattan"] = (
                cfg.manhattan_weight,
                manhattan_loss(fg.normals[~sky], fg.opacity[~sky], self.manhattan_angle),
            )
        return terms

    def on_validation_epoch_start(self) -> None:
        self.val_images = []

    def validation_step(self, view: ValView, batch_idx: int) -> None:
        out = self.model.render_image(view.rays(), chunk=self.cfg.val_chunk)
        photo = view.image.reshape(-1, 3)  # (H W, 3)
        pred = (_DIM * photo).index_copy(0, view.pixels, out["rgb"].clamp(0.0, 1.0).to(photo))
        mask = torch.zeros(len(photo), dtype=torch.bool, device=photo.device).index_fill_(0, view.pixels, True)
        shape = (view.height, view.width)
        metrics = {
            "val/psnr": psnr(out["rgb"], photo[view.pixels]),
            "val/ssim": masked_ssim(pred.reshape(*shape, 3), view.image, mask.reshape(shape)),
        }
        self.log_dict(metrics, sync_dist=True, batch_size=1)
        if self.trainer.is_global_zero:
            side_by_side = torch.cat([pred.reshape(*shape, 3), view.image], dim=1)  # (H, 2 W, 3)
            self.val_images.append((view.name, (side_by_side * 255).round().byte().cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        self.validated_at = self.global_step

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.cfg
        optimiser = torch.optim.Adam(self.parameters(), lr=cfg.lr, betas=(0.9, 0.99), eps=1e-15)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: lr_factor(step, cfg.warmup_steps, cfg.steps, cfg.lr_final_ratio)
        )
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["bigscene"] = {
            "block": self.block_id,
            "fingerprint": self.fingerprint,
            "sizer": self.sizer.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.sizer.load_state_dict(checkpoint["bigscene"]["sizer"])
