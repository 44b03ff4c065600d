"""The partition map: a top view of the blocks, cameras and SfM points, as a PNG (drawn with Pillow)."""

from __future__ import annotations

import colorsys
import io

import fsspec
import numpy as np
from PIL import Image, ImageDraw

from partitioning.layout import Block, XStrips

#: Longer side of the map in pixels; points drawn at most.
_SIZE = 1024
_MAX_POINTS = 200_000
_PAD = 24


def _palette(count: int) -> list[tuple[int, int, int]]:
    """`count` distinct, saturated colours (golden-ratio hue steps)."""
    out = []
    for i in range(count):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.85)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def point_blocks(xy: np.ndarray, blocks: list[Block]) -> np.ndarray:
    """(P,) int64 index of the block whose inner footprint holds each point xy (P, 2) (the last such block on a
    shared edge), -1 outside every block."""
    owner = np.full(len(xy), -1, dtype=np.int64)
    strips = XStrips(xy)
    for b, block in enumerate(blocks):
        (x0, y0), (x1, y1) = block.inner[:, :2]
        strip = strips.between(x0, x1)
        y = xy[strip, 1]
        owner[strip[(y >= y0) & (y <= y1)]] = b
    return owner


def draw_partition_map(
    path: str,
    blocks: list[Block],
    xyz: np.ndarray,
    centres: np.ndarray,
    forward: np.ndarray,
    train: np.ndarray,
) -> None:
    """Write the map to `path`: SfM points xyz (P, 3) coloured by the block whose inner box holds them,
    inner boxes (thick) and outer boxes (thin) with block ids, and cameras at centres (I, 3) with their
    viewing direction forward (I, 3); train (I,) bool marks training cameras (black), others are red."""
    outer = np.stack([b.outer[:, :2] for b in blocks])  # (B, 2, 2)
    lo = np.minimum(outer[:, 0].min(axis=0), centres[:, :2].min(axis=0))
    hi = np.maximum(outer[:, 1].max(axis=0), centres[:, :2].max(axis=0))
    span = np.maximum(hi - lo, 1e-9)
    scale = (_SIZE - 2 * _PAD) / span.max()
    width, height = (np.ceil(span * scale) + 2 * _PAD).astype(int)

    def px(xy: np.ndarray) -> np.ndarray:
        """Scene xy (N, 2) to image pixels (N, 2), y up."""
        out = (xy - lo) * scale + _PAD
        out[:, 1] = height - out[:, 1]
        return out

    colours = _palette(len(blocks))
    canvas = np.full((int(height), int(width), 3), 255, dtype=np.uint8)
    pts = xyz[:: max(1, len(xyz) // _MAX_POINTS), :2]
    owner = point_blocks(pts, blocks)
    drawn = owner >= 0
    where = px(pts[drawn]).astype(int)  # (P, 2) x, y
    dots = np.array(colours, dtype=np.uint8)[owner[drawn]]  # (P, 3)
    for dx in (0, 1):  # 2 x 2 pixel dots
        for dy in (0, 1):
            canvas[np.clip(where[:, 1] + dy, 0, height - 1), np.clip(where[:, 0] + dx, 0, width - 1)] = dots
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)

    for colour, block in zip(colours, blocks, strict=True):
        (ox0, oy1), (ox1, oy0) = px(block.outer[:, :2])
        draw.rectangle([ox0, oy0, ox1, oy1], outline=colour, width=1)
    for colour, block in zip(colours, blocks, strict=True):
        (ix0, iy1), (ix1, iy0) = px(block.inner[:, :2])
        draw.rectangle([ix0, iy0, ix1, iy1], outline=tuple(c // 2 for c in colour), width=3)
        cx, cy = px(block.centroid[None, :2])[0]
        draw.text((cx, cy), block.id, fill=(0, 0, 0), anchor="mm")

    tick = 0.02 * _SIZE
    flat = forward[:, :2] / np.maximum(np.linalg.norm(forward[:, :2], axis=1, keepdims=True), 1e-9)
    for (x, y), (dx, dy), is_train in zip(px(centres[:, :2]), flat, train, strict=True):
        colour = (0, 0, 0) if is_train else (220, 0, 0)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.line([x, y, x + dx * tick, y - dy * tick], fill=colour, width=1)
    draw.text(
        (_PAD // 2, _PAD // 4), "inner boxes thick, outer thin; cameras black (train) / red (held out)", fill=(0, 0, 0)
    )

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with fsspec.open(path, "wb") as f:
        f.write(buffer.getvalue())
