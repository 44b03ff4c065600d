"""The composite field: every block blended into one scene-wide SDF (or density) and colour.

At a point, the blocks whose weight there is positive contribute (see `weights`); each block is evaluated
only on its own points, on its own device. Blending is done relative to the first contributing block's
value, `v = v_ref + sum_b W_b (v_b - v_ref)`, which equals `sum_b W_b v_b` because the weights sum to 1
but is exact where blocks agree (two blocks holding one SDF give back that SDF bit for bit). Points no
block covers are empty: SDF `EMPTY_SDF`, density 0, no colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bigscene.errors import ConfigError, WorkspaceError
from bigscene.merge.blocks import BlockField
from bigscene.merge.weights import inverse_distance, partition_of_unity

#: SDF of space outside every block: far from any surface, so it renders empty.
EMPTY_SDF = 1.0e6
#: Blends of point values; image_space blends whole renders (bigscene.merge.render) and uses the partition of
#: unity for point queries (meshing, seams).
POINT_BLENDS = ("partition_of_unity", "inverse_distance")


@dataclass
class CompositeSample:
    """The composite's outputs at N points."""

    value: torch.Tensor  # (N,) SDF (neus) or density (nerf); EMPTY_SDF / 0 where uncovered
    rgb: torch.Tensor | None  # (N, 3); None when not asked (no directions)
    normals: torch.Tensor | None  # (N, 3) unit (neus, when asked)
    inv_s: torch.Tensor  # (N,) blended NeuS inverse std (geometric mean of the blocks')
    covered: torch.Tensor  # (N,) bool: some block covers the point


class CompositeField:
    """Blocks blended into one field. `blend`: partition_of_unity | inverse_distance | image_space (which blends
    renders, not points: point queries then use the partition of unity). `batch` bounds the points per pass."""

    def __init__(
        self,
        blocks: Sequence[BlockField],
        blend: str = "partition_of_unity",
        idw_margin: float = 1.15,
        batch: int = 1 << 17,
    ) -> None:
        if not blocks:
            raise WorkspaceError("no blocks to merge")
        self.blocks = list(blocks)
        self.blend = blend
        self.idw_margin = idw_margin
        self.batch = batch
        self.inner = torch.tensor(np.stack([b.box.inner for b in self.blocks]), dtype=torch.float32)  # (B, 2, 3)
        self.outer = torch.tensor(np.stack([b.box.outer for b in self.blocks]), dtype=torch.float32)  # (B, 2, 3)
        self.centroids = self.inner.mean(dim=1)  # (B, 3)
        self._kind: str | None = None

    @property
    def ids(self) -> list[str]:
        return [b.box.id for b in self.blocks]

    @property
    def kind(self) -> str:
        """neus or nerf (loads every block once)."""
        if self._kind is None:
            kinds = {b.kind for b in self.blocks}
            if len(kinds) != 1:
                raise ConfigError(f"blocks mix field kinds {sorted(kinds)}; retrain them with one model.kind")
            self._kind = kinds.pop()
        return self._kind

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3) box around every block's outer box."""
        return np.stack([self.outer[:, 0].min(dim=0).values.numpy(), self.outer[:, 1].max(dim=0).values.numpy()])

    def only(self, index: int) -> CompositeField:
        """One block alone, over its whole outer box."""
        return CompositeField([self.blocks[index]], "partition_of_unity", self.idw_margin, self.batch)

    def weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised weights (N, B) of the blocks at x (N, 3), and coverage (N,) bool."""
        inner, outer = self.inner.to(x.device), self.outer.to(x.device)
        if self.blend == "inverse_distance":
            return inverse_distance(x, outer, self.centroids.to(x.device), self.idw_margin)
        return partition_of_unity(x, inner, outer)

    def evaluate(self, x: torch.Tensor, dirs: torch.Tensor | None = None) -> CompositeSample:
        """Blended geometry at x (N, 3); with view directions dirs (N, 3) also colour and normals."""
        parts = [
            self._evaluate(x[s : s + self.batch], None if dirs is None else dirs[s : s + self.batch])
            for s in range(0, max(len(x), 1), self.batch)
        ]
        if len(parts) == 1:
            return parts[0]

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return CompositeSample(cat("value"), cat("rgb"), cat("normals"), cat("inv_s"), cat("covered"))

    def _evaluate(self, x: torch.Tensor, dirs: torch.Tensor | None) -> CompositeSample:
        n = x.shape[0]
        weights, covered = self.weights(x)  # (N, B), (N,)
        ref = x.new_zeros(n)
        has_ref = torch.zeros(n, dtype=torch.bool, device=x.device)
        value = x.new_zeros(n)
        log_inv_s = x.new_zeros(n)
        with_colour = dirs is not None
        rgb_ref, rgb = x.new_zeros(n, 3), x.new_zeros(n, 3)
        normals: torch.Tensor | None = x.new_zeros(n, 3) if with_colour else None
        for b, block in enumerate(self.blocks):
            index = torch.nonzero(weights[:, b] > 0).squeeze(1)  # (M,)
            if index.numel() == 0:
                continue
            w = weights[index, b]  # (M,)
            xb = x[index].to(block.device)
            if with_colour:
                sample = block.query(xb, dirs[index].to(block.device))
                v = sample.value.to(x.device).float()
                c = (
                    sample.rgb.to(x.device).float()
                    if sample.rgb is not None
                    else torch.full((len(index), 3), 0.5, device=x.device)
                )
            else:
                v = block.geometry(xb).to(x.device).float()
            first = ~has_ref[index]
            ref[index[first]] = v[first]
            value.index_add_(0, index, w * (v - ref[index]))
            if with_colour:
                rgb_ref[index[first]] = c[first]
                rgb.index_add_(0, index, w[:, None] * (c - rgb_ref[index]))
                if normals is not None and sample.normals is not None:
                    normals.index_add_(0, index, w[:, None] * sample.normals.to(x.device).float())
                else:
                    normals = None
            has_ref[index] = True
            if block.kind == "neus":
                log_inv_s.index_add_(0, index, w * float(np.log(max(block.inv_s, 1e-6))))
        value = ref + value
        empty = EMPTY_SDF if self.kind == "neus" else 0.0
        value = torch.where(covered, value, torch.full_like(value, empty))
        if with_colour:
            rgb = torch.where(covered[:, None], rgb_ref + rgb, torch.zeros_like(rgb))
            if normals is not None:
                normals = torch.nn.functional.normalize(normals, dim=-1)
        return CompositeSample(value, rgb if with_colour else None, normals, log_inv_s.exp(), covered)

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        """SDF (neus) or density (nerf) (N,) at x (N, 3): the callable samplers probe."""
        return self.evaluate(x).value

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """The SDF (N,) of a NeuS composite (EMPTY_SDF outside every block)."""
        return self.geometry(x)

    def colour(self, x: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """Blended colour (N, 3) at x (N, 3) seen along dirs (N, 3)."""
        return self.evaluate(x, dirs).rgb
