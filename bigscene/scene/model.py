"""The scene record every stage reads: cameras, posed images, sparse points, region of interest."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bigscene.errors import InputError
from bigscene.scene.cameras import Camera

SPLITS = ("train", "val", "test")


@dataclass
class ImageRecord:
    """One posed photo. `name` is relative to the scene's image root; `appearance_id` is global."""

    name: str
    camera_id: int
    appearance_id: int
    split: str = "train"


@dataclass
class SparsePoints:
    """SfM points. xyz: (P, 3) float64, rgb: (P, 3) uint8, track_length: (P,) int32, error: (P,) float32."""

    xyz: np.ndarray
    rgb: np.ndarray
    track_length: np.ndarray
    error: np.ndarray

    @classmethod
    def empty(cls) -> SparsePoints:
        return cls(np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0, np.int32), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.xyz)

    def subset(self, mask: np.ndarray) -> SparsePoints:
        return SparsePoints(self.xyz[mask], self.rgb[mask], self.track_length[mask], self.error[mask])


@dataclass
class Scene:
    """A posed image collection.

    c2w: (I, 4, 4) float64 camera-to-world, OpenCV convention, one per image.
    roi: (2, 3) float64 min and max corner of the region of interest, in the scene frame.
    world_from_input: (4, 4) similarity that maps input-frame points to the scene frame;
    its inverse maps every output back to the frame the data came in.
    """

    cameras: dict[int, Camera]
    images: list[ImageRecord]
    c2w: np.ndarray
    points: SparsePoints = field(default_factory=SparsePoints.empty)
    image_root: str = ""
    roi: np.ndarray | None = None
    world_from_input: np.ndarray = field(default_factory=lambda: np.eye(4))
    #: RGB in [0, 1] that RGBA images are composited on when loaded (Blender scenes); None for RGB photos.
    background: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        self.c2w = np.asarray(self.c2w, dtype=np.float64).reshape(-1, 4, 4)
        if len(self.c2w) != len(self.images):
            raise InputError("scene", f"{len(self.images)} images but {len(self.c2w)} poses")

    def validate(self, source: object = "scene") -> None:
        """Raise InputError naming `source` for anything later stages cannot use."""
        if not self.images:
            raise InputError(source, "no registered images")
        bad = [im.name for im, pose in zip(self.images, self.c2w, strict=True) if not np.all(np.isfinite(pose))]
        if bad:
            raise InputError(source, f"non-finite camera pose for {len(bad)} image(s), first: {bad[0]}")
        missing = {im.camera_id for im in self.images} - set(self.cameras)
        if missing:
            raise InputError(source, f"images refer to unknown camera ids {sorted(missing)}")
        for im in self.images:
            if im.split not in SPLITS:
                raise InputError(source, f"image {im.name} has split {im.split!r}; expected one of {SPLITS}")

    def camera_of(self, index: int) -> Camera:
        return self.cameras[self.images[index].camera_id]

    def camera_centres(self) -> np.ndarray:
        """(I, 3) camera centres in the scene frame."""
        return self.c2w[:, :3, 3].copy()

    def split_indices(self, split: str) -> np.ndarray:
        return np.array([i for i, im in enumerate(self.images) if im.split == split], dtype=np.int64)
