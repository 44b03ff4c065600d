"""Which format a scene source is in, and one entry point that reads any of them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bigscene.errors import ConfigError, InputError
from bigscene.scene.colmap import read_colmap
from bigscene.scene.images import ReadResult
from bigscene.scene.neus import read_neus
from bigscene.scene.transforms import read_blender, read_transforms

log = logging.getLogger(__name__)

FORMATS = ("auto", "colmap", "transforms", "blender", "neus")
#: Where a COLMAP model may sit below a source directory, in the order searched.
_COLMAP_DIRS = (".", "sparse/0", "sparse")
_BLENDER_FILES = tuple(f"transforms_{split}.json" for split in ("train", "val", "test"))
_NEUS_FILES = ("cameras_sphere.npz", "cameras.npz")
_LOOKED_FOR = (
    "cameras.bin or cameras.txt in ., sparse/0 or sparse (colmap); transforms_train.json (blender); "
    "transforms.json or a .json file (transforms); cameras_sphere.npz or cameras.npz (neus)"
)


def find_colmap_model(source: str | os.PathLike) -> Path | None:
    """The first of `source`, `source/sparse/0`, `source/sparse` holding cameras.bin or cameras.txt."""
    for sub in _COLMAP_DIRS:
        candidate = Path(source) / sub
        if (candidate / "cameras.bin").is_file() or (candidate / "cameras.txt").is_file():
            return candidate
    return None


def detect_format(source: str | os.PathLike) -> str:
    """The format of a scene file or directory: "colmap", "blender", "transforms" or "neus".

    A directory holding several is read as the first of those, in that order.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(source, "no such file or directory")
    if source.is_file():
        if source.name in _BLENDER_FILES:
            return "blender"
        if source.suffix == ".json":
            return "transforms"
        if source.name in _NEUS_FILES:
            return "neus"
        raise InputError(source, f"not a scene file; looked for {_LOOKED_FOR}")
    found = [
        fmt
        for fmt, present in (
            ("colmap", find_colmap_model(source) is not None),
            ("blender", (source / "transforms_train.json").is_file()),
            ("transforms", (source / "transforms.json").is_file()),
            ("neus", any((source / name).is_file() for name in _NEUS_FILES)),
        )
        if present
    ]
    if not found:
        raise InputError(source, f"no scene found; looked for {_LOOKED_FOR}")
    if len(found) > 1:
        log.info(
            "%s holds %s scenes; reading it as %s (choose with format=)",
            source,
            " and ".join(found),
            found[0],
        )
    return found[0]


def read_scene(
    source: str | os.PathLike,
    format: str = "auto",
    *,
    image_root: str | os.PathLike | None = None,
    image_mismatch: str = "error",
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> ReadResult:
    """Read a scene in any supported format (`FORMATS`; "auto" detects it).

    `image_root` applies to COLMAP models only, `image_mismatch` to NeuS scenes only, and `background`
    (the colour RGBA images are composited on) to Blender and transforms.json scenes.
    """
    if format not in FORMATS:
        raise ConfigError(f"format={format!r}: expected one of {', '.join(FORMATS)}")
    source = Path(source)
    fmt = detect_format(source) if format == "auto" else format
    if image_root is not None and fmt != "colmap":
        raise ConfigError(f"image_root applies to COLMAP models only, not to a {fmt} scene")
    if not source.exists():
        raise InputError(source, "no such file or directory")
    directory = source.parent if source.is_file() else source
    if fmt == "colmap":
        return read_colmap(find_colmap_model(directory) or directory, image_root)
    if fmt == "transforms":
        return read_transforms(source, background)
    if fmt == "blender":
        return read_blender(directory, background)
    return read_neus(directory, image_mismatch)
