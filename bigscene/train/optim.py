"""Schedules of one block's optimisation: learning rate, NeuS cosine annealing, and the adaptive ray batch."""

from __future__ import annotations

import math
import multiprocessing
from dataclasses import dataclass, field
from typing import Any

#: Fewest rays a step may draw, whatever the samples per ray.
MIN_RAYS = 32
#: Weight of the newest step in the running samples-per-ray estimate.
_SMOOTHING = 0.1


def lr_factor(step: int, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """Multiplier of the base learning rate: linear warm-up to 1, then cosine decay to final_ratio (NeuS)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cos_anneal_ratio(step: int, anneal_steps: int) -> float:
    """NeuS's cosine annealing ratio: 0 -> 1 over anneal_steps (1 at once when 0)."""
    return 1.0 if anneal_steps <= 0 else min(1.0, step / anneal_steps)


class RayBudget:
    """Rays per batch, shared with data-loader worker processes (they read it as they form each batch)."""

    def __init__(self, rays: int) -> None:
        self._value = multiprocessing.get_context().Value("i", int(rays), lock=False)

    @property
    def rays(self) -> int:
        return int(self._value.value)

    @rays.setter
    def rays(self, rays: int) -> None:
        self._value.value = int(rays)


@dataclass
class BatchSizer:
    """Adapts rays per batch so that samples per step stay near `target_samples` (0: fixed batch).

    Samples per ray change as the surface sharpens and the guided sampler focuses; a running estimate of
    them sets the next batch: rays = target / samples-per-ray, clamped to [MIN_RAYS, max_rays].
    """

    budget: RayBudget
    target_samples: int
    max_rays: int
    samples_per_ray: float = field(default=0.0)

    def update(self, rays: int, samples: int) -> int:
        """Record a step's rays and samples; returns (and shares) the next step's ray count."""
        if self.target_samples <= 0 or rays <= 0:
            return self.budget.rays
        observed = samples / rays
        self.samples_per_ray = (
            observed if self.samples_per_ray <= 0 else (1 - _SMOOTHING) * self.samples_per_ray + _SMOOTHING * observed
        )
        wanted = round(self.target_samples / max(self.samples_per_ray, 1.0))
        self.budget.rays = max(MIN_RAYS, min(self.max_rays, wanted))
        return self.budget.rays

    def state_dict(self) -> dict[str, Any]:
        return {"rays": self.budget.rays, "samples_per_ray": self.samples_per_ray}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget.rays = int(state["rays"])
        self.samples_per_ray = float(state["samples_per_ray"])
