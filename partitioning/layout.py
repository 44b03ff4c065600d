"""Block layout: cells that tile the ROI's ground plane exactly, each with an inner and an outer box.

Cells are rows x cols equal rectangles, or balanced k-d splits that give every cell a similar number of
SfM points. A block's height range comes from the points over its outer footprint, plus a margin; its
outer box is the inner box grown by the overlap fraction (centred), so neighbours share a band. Its
ground is the lowest of those points: below it the block is taken as solid (nothing is seen from under
the ground).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bigscene.errors import ConfigError

#: A cut of a k-d split keeps at least this fraction of the cell on its smaller side.
_MIN_CUT_FRACTION = 0.1


@dataclass(frozen=True)
class Block:
    """One block. inner, outer: (2, 3) float64 min and max corners; points: SfM points in the inner box;
    ground: the lowest point's height over the outer footprint."""

    id: str
    inner: np.ndarray
    outer: np.ndarray
    points: int
    ground: float

    @property
    def centroid(self) -> np.ndarray:
        """(3,) centre of the inner box: the point the block's model is centred on."""
        return self.inner.mean(axis=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "inner": self.inner.tolist(),
            "outer": self.outer.tolist(),
            "centroid": self.centroid.tolist(),
            "points": self.points,
            "ground": self.ground,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Block:
        inner, outer = np.array(doc["inner"], float), np.array(doc["outer"], float)
        return cls(doc["id"], inner, outer, int(doc["points"]), float(doc["ground"]))


def grid_cells(roi_xy: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
    """rows x cols equal cells over roi_xy (2, 2), row-major from the min corner; each cell (2, 2)."""
    xs = np.linspace(roi_xy[0, 0], roi_xy[1, 0], cols + 1)
    ys = np.linspace(roi_xy[0, 1], roi_xy[1, 1], rows + 1)
    return [np.array([[xs[c], ys[r]], [xs[c + 1], ys[r + 1]]]) for r in range(rows) for c in range(cols)]


def kd_cells(roi_xy: np.ndarray, xy: np.ndarray, count: int) -> list[np.ndarray]:
    """`count` cells holding similar numbers of the points xy (P, 2): recursive splits of the longer side
    at the point quantile that divides the count, so any count (not only powers of two) is balanced."""
    if count == 1:
        return [roi_xy.copy()]
    axis = 0 if roi_xy[1, 0] - roi_xy[0, 0] >= roi_xy[1, 1] - roi_xy[0, 1] else 1
    lo, hi = roi_xy[0, axis], roi_xy[1, axis]
    first = count // 2
    cut = np.quantile(xy[:, axis], first / count) if len(xy) else lo + (hi - lo) * first / count
    cut = float(np.clip(cut, lo + _MIN_CUT_FRACTION * (hi - lo), hi - _MIN_CUT_FRACTION * (hi - lo)))
    low, high = roi_xy.copy(), roi_xy.copy()
    low[1, axis] = cut
    high[0, axis] = cut
    below = xy[:, axis] < cut
    return kd_cells(low, xy[below], first) + kd_cells(high, xy[~below], count - first)


def _shares_edge(a: np.ndarray, b: np.ndarray) -> bool:
    """True when cells a, b (2, 2) share a whole edge, so their union is a rectangle."""
    for axis in (0, 1):
        other = 1 - axis
        same_span = a[0, other] == b[0, other] and a[1, other] == b[1, other]
        if same_span and (a[1, axis] == b[0, axis] or b[1, axis] == a[0, axis]):
            return True
    return False


def merge_cell(cells: list[np.ndarray], index: int, weights: np.ndarray) -> list[np.ndarray]:
    """Merge cell `index` into the neighbour sharing a whole edge with it that has the smallest weight."""
    neighbours = [j for j, cell in enumerate(cells) if j != index and _shares_edge(cells[index], cell)]
    if not neighbours:
        raise ConfigError(
            f"block {index} receives no rays and shares no whole edge with another block, so it cannot be "
            "merged; use fewer partition.rows/cols or partition.num_blocks"
        )
    target = min(neighbours, key=lambda j: (weights[j], j))
    union = np.stack([np.minimum(cells[index][0], cells[target][0]), np.maximum(cells[index][1], cells[target][1])])
    return [union if j == target else cell for j, cell in enumerate(cells) if j != index]


def order_cells(cells: list[np.ndarray]) -> list[np.ndarray]:
    """Cells sorted by their min corner (y, then x), so block ids read row by row."""
    return sorted(cells, key=lambda c: (c[0, 1], c[0, 0]))


class XStrips:
    """Points (P, >=1) sorted by x once, so that each block's points come from the strip of x under its box
    instead of a pass over all the points."""

    def __init__(self, points: np.ndarray) -> None:
        self.order = np.argsort(points[:, 0], kind="stable")  # (P,) indices of the points by x
        self.points = points[self.order]  # (P, D) sorted by x: a strip of them is a view
        self.x = self.points[:, 0]

    def span(self, x0: float, x1: float) -> slice:
        """The strip x0 <= x <= x1: `points[span]` are its points, `order[span]` their indices."""
        return slice(np.searchsorted(self.x, x0, side="left"), np.searchsorted(self.x, x1, side="right"))

    def between(self, x0: float, x1: float) -> np.ndarray:
        """(S,) int64 indices of the points with x0 <= x <= x1."""
        return self.order[self.span(x0, x1)]


def make_blocks(
    cells: list[np.ndarray], strips: XStrips, overlap: float, height_margin: float, min_pad: float
) -> list[Block]:
    """Blocks over ordered cells (2, 2) from the points (P, 3) inside the ROI, sorted into x strips.

    The height range is the z range of the points over the outer footprint, grown by `height_margin` of
    that range each way (at least `min_pad`); the outer box grows the inner box by `overlap` of its size.
    """
    z_all = (strips.points[:, 2].min(), strips.points[:, 2].max())
    blocks = []
    for index, cell in enumerate(cells):
        size = cell[1] - cell[0]  # (2,)
        grow = 0.5 * overlap * size
        foot = np.stack([cell[0] - grow, cell[1] + grow])
        strip = strips.points[strips.span(foot[0, 0], foot[1, 0])]
        over = strip[(strip[:, 1] >= foot[0, 1]) & (strip[:, 1] <= foot[1, 1]), 2]
        z0, z1 = (over.min(), over.max()) if over.size else z_all
        pad = max(height_margin * (z1 - z0), min_pad)
        inner = np.array([[*cell[0], z0 - pad], [*cell[1], z1 + pad]])
        z_grow = 0.5 * overlap * (inner[1, 2] - inner[0, 2])
        outer = np.array([[*foot[0], inner[0, 2] - z_grow], [*foot[1], inner[1, 2] + z_grow]])
        inside = (strip[:, :2] >= cell[0]).all(axis=1) & (strip[:, :2] < cell[1]).all(axis=1)
        blocks.append(Block(f"b{index:03d}", inner, outer, int(inside.sum()), float(z0)))
    return blocks
