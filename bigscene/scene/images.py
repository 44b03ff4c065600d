"""Image files: decoding to RGB, cheap size look-ups, and which of a scene's images are present.

Readers share `ReadResult` and `report_missing` so that every format skips frames whose image is missing
the same way: one warning that counts them, and an error naming the folder when none is left.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bigscene.errors import InputError
from bigscene.scene.model import Scene

log = logging.getLogger(__name__)

#: Errors Pillow raises for unreadable, corrupt or truncated files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass
class ReadResult:
    """What a reader returns: the scene, and the names of frames skipped because their image is missing."""

    scene: Scene
    skipped: list[str] = field(default_factory=list)


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise InputError(path, "no such image file")
    try:
        return Image.open(path)
    except _DECODE_ERRORS as exc:
        raise InputError(path, f"not a readable image ({exc})") from exc


def load_image(path: str | os.PathLike, background: tuple[float, float, float] | None = None) -> np.ndarray:
    """Decode an image fully to (H, W, 3) uint8 RGB.

    Greyscale becomes RGB. An image with alpha is composited on `background` (RGB in [0, 1]) when
    given, otherwise its alpha is dropped. A missing, corrupt or truncated file raises InputError.
    """
    path = Path(path)
    with _open(path) as image:
        try:
            image.load()  # force the full decode so truncation shows here, not later
            if image.mode.startswith("I;16"):
                pixels = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)  # (H, W)
                return np.repeat(pixels[:, :, None], 3, axis=2)
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            rgba = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))  # (H, W, 4 or 3) uint8
        except _DECODE_ERRORS as exc:
            raise InputError(path, f"corrupt or truncated image ({exc})") from exc
    if not has_alpha:
        return np.ascontiguousarray(rgba)
    if background is None:
        return np.ascontiguousarray(rgba[:, :, :3])
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0  # (H, W, 1)
    backdrop = np.asarray(background, dtype=np.float32) * 255.0  # (3,)
    out = rgba[:, :, :3].astype(np.float32) * alpha + backdrop * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    path = Path(path)
    with _open(path) as image:
        return image.size


def check_images(root: str | os.PathLike, names: Sequence[str]) -> list[str]:
    """The names (relative to `root`) that are not files."""
    root = Path(root)
    return [name for name in names if not (root / name).is_file()]


def report_missing(root: str | os.PathLike, missing: Sequence[str], total: int, source: object) -> None:
    """Warn once about `missing` of `total` frames; InputError naming `root` when all are missing."""
    if not missing:
        return
    if len(missing) == total:
        raise InputError(root, f"none of the {total} images of {source} exist (first: {missing[0]})")
    log.warning(
        "%s: skipping %d of %d frames whose image is missing under %s (first: %s)",
        source,
        len(missing),
        total,
        root,
        missing[0],
    )
