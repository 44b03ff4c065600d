"""Blocks as the merger sees them: their boxes, the small field protocol the composite blends, and loaders.

A `BlockField` is anything with a box, a kind (neus: SDF, nerf: density), `geometry(x)`, `query(x, dirs)`
and `background_rgb(rays)`. `ModuleBlock` adapts a trained block (the trainer's exported model: field,
appearance codes, background); `AnalyticBlock` wraps an SDF callable (tests, benchmarks, ground truth);
`LazyBlock` loads a block on first use, onto the device that has room, through a per-process cache.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from bigscene.errors import ConfigError
from bigscene.fields import BackgroundField, NeuSField
from bigscene.render import Rays, render_background

log = logging.getLogger(__name__)

#: unit offsets of central finite differences: +x, +y, +z, -x, -y, -z.
_FD_DIRS = torch.cat([torch.eye(3), -torch.eye(3)])


@dataclass(frozen=True)
class BlockBox:
    """A block's boxes, (2, 3) float64 min and max corners: its model owns `inner` and is valid in `outer`."""

    id: str
    inner: np.ndarray
    outer: np.ndarray

    @property
    def centroid(self) -> np.ndarray:
        """(3,) centre of the inner box (Mega-NeRF's centroid)."""
        return self.inner.mean(axis=0)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BlockBox:
        """From a partition block record (block.json)."""
        return cls(str(doc["id"]), np.array(doc["inner"], np.float64), np.array(doc["outer"], np.float64))


@dataclass
class FieldSample:
    """A field's outputs at S points."""

    value: torch.Tensor  # (S,) SDF (neus) or density (nerf)
    rgb: torch.Tensor | None  # (S, 3) in [0, 1]; None for a field without colour
    normals: torch.Tensor | None  # (S, 3) unit outward normals (neus), else None


@runtime_checkable
class BlockField(Protocol):
    """What the composite needs of one block."""

    box: BlockBox
    kind: str  # "neus" | "nerf"
    inv_s: float  # NeuS inverse standard deviation (sharpness of the rendered surface); unused for nerf
    device: torch.device

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        """SDF or density (S,) at world points x (S, 3) on `device`."""
        ...

    def query(self, x: torch.Tensor, dirs: torch.Tensor) -> FieldSample:
        """Geometry, colour and normals at x (S, 3) seen along unit directions dirs (S, 3)."""
        ...

    def background_rgb(self, rays: Rays) -> torch.Tensor | None:
        """Colour (N, 3) seen beyond each ray's far bound, or None without a background model."""
        ...


@dataclass
class AnalyticBlock:
    """A block holding an analytic SDF: `sdf_fn` (S, 3) -> (S,), optional `colour_fn` (S, 3) -> (S, 3).

    Normals are central differences of the SDF; the background is a constant colour (or none).
    """

    box: BlockBox
    sdf_fn: Callable[[torch.Tensor], torch.Tensor]
    colour_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    inv_s: float = 64.0
    background: tuple[float, float, float] | None = None
    fd_step: float = 1e-3
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    kind: str = "neus"

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        return self.sdf_fn(x)

    def query(self, x: torch.Tensor, dirs: torch.Tensor) -> FieldSample:
        n = x.shape[0]
        shifted = (x[None] + self.fd_step * _FD_DIRS.to(x)[:, None]).reshape(-1, 3)  # (6 S, 3)
        values = self.sdf_fn(torch.cat([x, shifted]))  # (7 S,)
        plus, minus = values[n:].view(2, 3, n)
        normals = F.normalize((plus - minus).T, dim=-1)  # (S, 3)
        rgb = None if self.colour_fn is None else self.colour_fn(x)
        return FieldSample(values[:n], rgb, normals)

    def background_rgb(self, rays: Rays) -> torch.Tensor | None:
        if self.background is None:
            return None
        return torch.tensor(self.background, dtype=torch.float32, device=rays.origins.device).expand(len(rays), 3)


class ModuleBlock:
    """A trained block: its field (NeuSField or NeRFField), background field and appearance codes.

    Novel views have no trained appearance code: every query uses the mean code (NeRF-W's evaluation).
    """

    def __init__(
        self,
        box: BlockBox,
        field_module: torch.nn.Module,
        background: BackgroundField | None = None,
        appearance: torch.Tensor | None = None,
        background_samples: int = 32,
    ) -> None:
        self.box = box
        self.field = field_module.eval()
        self.background = None if background is None else background.eval()
        self.appearance = appearance  # (A,) the code every query uses
        self.background_samples = background_samples
        self.kind = "neus" if isinstance(field_module, NeuSField) else "nerf"
        self.inv_s = float(field_module.inv_s().detach()) if self.kind == "neus" else 0.0
        self.device = next(field_module.parameters()).device

    @classmethod
    def from_model(cls, box: BlockBox, model: torch.nn.Module, background_samples: int = 32) -> ModuleBlock:
        """From the trainer's block model (attributes field, background, appearance: an AppearanceEmbedding)."""
        appearance = None if model.appearance is None else model.appearance.mean_code().detach()
        return cls(box, model.field, model.background, appearance, background_samples)

    def _codes(self, n: int) -> torch.Tensor | None:
        return None if self.appearance is None else self.appearance.expand(n, -1)

    @torch.no_grad()
    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        return self.field.sdf(x) if self.kind == "neus" else self.field.density(x)

    @torch.no_grad()
    def query(self, x: torch.Tensor, dirs: torch.Tensor) -> FieldSample:
        out = self.field(x, dirs, self._codes(x.shape[0]))
        if self.kind == "neus":
            return FieldSample(out.sdf, out.rgb, out.normals)
        return FieldSample(out.density, out.rgb, None)

    @torch.no_grad()
    def background_rgb(self, rays: Rays) -> torch.Tensor | None:
        if self.background is None:
            return None
        return render_background(self.background, rays, self._codes(len(rays)), self.background_samples)


def pick_device(name: str) -> torch.device:
    """`auto`: the GPU with the most free memory now, else the CPU; otherwise the named device."""
    if name != "auto":
        return torch.device(name)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
    return torch.device("cuda", int(np.argmax(free)))


class BlockCache:
    """Loaded blocks of this process by key, least recently used first out beyond `limit` (0: no limit)."""

    def __init__(self) -> None:
        self._blocks: OrderedDict[str, BlockField] = OrderedDict()

    def get(self, key: str, load: Callable[[], BlockField], limit: int) -> BlockField:
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return self._blocks[key]
        while limit and len(self._blocks) >= limit:
            evicted, _ = self._blocks.popitem(last=False)
            log.debug("unloading block %s", evicted)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        block = load()
        self._blocks[key] = block
        return block

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        self._blocks.clear()


#: The blocks this process has loaded (Ray workers keep theirs between tasks).
CACHE = BlockCache()


@dataclass
class LazyBlock:
    """A block loaded on first use by `loader(device)` (a picklable callable), onto `device` (auto: the GPU with
    room), and kept in the process cache under `key`; pickles without its weights, so tasks can carry it.
    `kind` is declared (the training config's model.kind), so the composite can plan without loading blocks; a
    loaded block of another kind is a ConfigError."""

    box: BlockBox
    loader: Callable[[torch.device], BlockField]
    key: str
    kind: str
    device_name: str = "auto"
    max_loaded: int = 0

    def get(self) -> BlockField:
        block = CACHE.get(self.key, lambda: self.loader(pick_device(self.device_name)), self.max_loaded)
        if block.kind != self.kind:
            raise ConfigError(
                f"block {self.box.id} holds a {block.kind} model but model.kind={self.kind}; "
                "merge with the config the blocks were trained with"
            )
        return block

    @property
    def inv_s(self) -> float:
        return self.get().inv_s

    @property
    def device(self) -> torch.device:
        return self.get().device

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        return self.get().geometry(x)

    def query(self, x: torch.Tensor, dirs: torch.Tensor) -> FieldSample:
        return self.get().query(x, dirs)

    def background_rgb(self, rays: Rays) -> torch.Tensor | None:
        return self.get().background_rgb(rays)
