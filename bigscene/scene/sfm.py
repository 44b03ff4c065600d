"""Structure from motion on a folder of photos, through pycolmap on the CPU.

`run_sfm` checks that every photo decodes, extracts SIFT features, matches image pairs (exhaustive,
sequential, spatial or vocabulary-tree pairing), runs incremental (COLMAP) or global (GLOMAP) mapping, keeps
the model with the most registered images, writes it to ``<work_dir>/sparse/0`` (smaller models, if any,
to ``sparse/1`` ...) and reads it back into a Scene with `bigscene.scene.colmap.read_colmap`.

Every call starts afresh: the database and models of an earlier run in `work_dir` are replaced.
`seed` fixes COLMAP's random number generators; COLMAP is only bit-for-bit repeatable with
``num_threads=1`` (multi-threaded matching and bundle adjustment reorder floating-point sums).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pycolmap

from bigscene.errors import ConfigError, InputError
from bigscene.scene.cameras import CAMERA_MODELS
from bigscene.scene.images import image_size, load_image
from bigscene.scene.model import Scene

log = logging.getLogger(__name__)

MATCHERS = ("auto", "exhaustive", "sequential", "spatial", "vocabtree")
MAPPERS = ("incremental", "global")
#: File name endings read as photos (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
#: matcher="auto" matches all pairs up to this many images, consecutive ones beyond.
AUTO_EXHAUSTIVE_MAX_IMAGES = 200


@dataclass
class SfmOptions:
    """How `run_sfm` reconstructs.

    matcher: "auto" (exhaustive for up to 200 images, else sequential), "exhaustive" (every pair),
        "sequential" (neighbours in file-name order: video frames, flight lines; loop detection when a
        vocabulary tree is given), "spatial" (neighbours by EXIF GPS position) or "vocabtree" (image
        retrieval; needs `vocab_tree_path`).
    mapper: "incremental" (COLMAP) or "global" (GLOMAP).
    camera_model: a COLMAP model bigscene supports (see `bigscene.scene.cameras.CAMERA_MODELS`).
    single_camera: one shared calibration for all photos (all must be the same size); otherwise COLMAP
        groups photos into cameras by size and EXIF.
    max_image_size: photos are downscaled to this longest side for feature extraction only (keypoints and
        calibrations stay in full-resolution pixels).
    num_threads: -1 for all cores; 1 for repeatable results.
    seed: seeds COLMAP's random number generators.
    vocab_tree_path: a COLMAP vocabulary tree file (for "vocabtree", and loop detection in "sequential").
    """

    matcher: str = "auto"
    mapper: str = "incremental"
    camera_model: str = "SIMPLE_RADIAL"
    single_camera: bool = True
    max_image_size: int = 1600
    num_threads: int = -1
    seed: int = 0
    vocab_tree_path: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise ConfigError(f"sfm matcher must be one of {', '.join(MATCHERS)}; got {self.matcher!r}")
        if self.mapper not in MAPPERS:
            raise ConfigError(f"sfm mapper must be one of {', '.join(MAPPERS)}; got {self.mapper!r}")
        if self.camera_model not in CAMERA_MODELS:
            raise ConfigError(f"sfm camera_model must be one of {', '.join(CAMERA_MODELS)}; got {self.camera_model!r}")
        if int(self.max_image_size) <= 0:
            raise ConfigError(f"sfm max_image_size must be positive; got {self.max_image_size}")
        if int(self.num_threads) == 0 or int(self.num_threads) < -1:
            raise ConfigError(f"sfm num_threads must be -1 (all cores) or positive; got {self.num_threads}")
        if self.vocab_tree_path in ("", None):
            self.vocab_tree_path = None
        if self.matcher == "vocabtree" and self.vocab_tree_path is None:
            raise ConfigError(
                "sfm matcher 'vocabtree' needs vocab_tree_path, a COLMAP vocabulary tree file "
                "(e.g. vocab_tree_flickr100K_words256K.bin from colmap.github.io, downloaded beforehand: "
                "bigscene downloads nothing); or use matcher 'exhaustive' or 'sequential'"
            )


@dataclass
class SfmResult:
    """The reconstruction `run_sfm` kept and how it went. `unregistered` lists photos it could not place."""

    scene: Scene
    total_images: int
    registered_images: int
    mean_reprojection_error_px: float
    points: int
    model_dir: Path
    unregistered: list[str] = field(default_factory=list)


def find_images(images_dir: str | os.PathLike) -> list[str]:
    """Photo file names under `images_dir` (recursively, hidden entries skipped), relative, '/'-separated,
    sorted."""
    root = Path(images_dir)
    names = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            names.append(rel.as_posix())
    return sorted(names)


def check_photos(images_dir: Path, names: list[str], single_camera: bool) -> None:
    """Decode every photo once; InputError naming the first corrupt one (or the first odd-sized one when
    all photos must share one camera)."""
    first_size = None
    for index, name in enumerate(names):
        path = images_dir / name
        load_image(path)  # raises InputError naming the file
        size = image_size(path)
        if first_size is None:
            first_size = size
        elif single_camera and size != first_size:
            raise InputError(
                path,
                f"image is {size[0]}x{size[1]} but {names[0]} is {first_size[0]}x{first_size[1]}; "
                "single_camera needs photos of one size (set single_camera to false)",
            )
        if (index + 1) % 500 == 0:
            log.info("checked %d / %d photos", index + 1, len(names))


@contextlib.contextmanager
def _colmap_logging() -> Iterator[None]:
    """Quiet COLMAP's own (glog) INFO lines unless this module logs at DEBUG."""
    previous = pycolmap.logging.minloglevel
    if not log.isEnabledFor(logging.DEBUG):
        pycolmap.logging.minloglevel = int(pycolmap.logging.Level.WARNING.value)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


def _resolve_matcher(options: SfmOptions, n_images: int) -> str:
    if options.matcher != "auto":
        return options.matcher
    return "exhaustive" if n_images <= AUTO_EXHAUSTIVE_MAX_IMAGES else "sequential"


def _vocab_tree(options: SfmOptions) -> str | None:
    if options.vocab_tree_path is None:
        return None
    path = Path(options.vocab_tree_path)
    if not path.is_file():
        raise InputError(path, "vocabulary tree file does not exist (bigscene cannot download one)")
    return str(path)


def _extract(database: Path, images_dir: Path, names: list[str], options: SfmOptions) -> None:
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = options.camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = int(options.max_image_size)
    extraction.num_threads = int(options.num_threads)
    extraction.use_gpu = False
    pycolmap.extract_features(
        database,
        images_dir,
        image_names=names,
        camera_mode=pycolmap.CameraMode.SINGLE if options.single_camera else pycolmap.CameraMode.AUTO,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )


def _match(database: Path, images_dir: Path, matcher: str, options: SfmOptions) -> None:
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = int(options.num_threads)
    matching.use_gpu = False
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = int(options.seed)
    common = {
        "matching_options": matching,
        "verification_options": verification,
        "device": pycolmap.Device.cpu,
    }
    vocab = _vocab_tree(options)
    if matcher == "exhaustive":
        pycolmap.match_exhaustive(database, **common)
    elif matcher == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.num_threads = int(options.num_threads)
        if vocab is not None:
            pairing.loop_detection = True
            pairing.vocab_tree_path = vocab
        pycolmap.match_sequential(database, pairing_options=pairing, **common)
    elif matcher == "spatial":
        db = pycolmap.Database.open(database)
        try:
            priors = db.num_pose_priors()
        finally:
            db.close()
        if priors == 0:
            raise InputError(
                images_dir,
                "matcher 'spatial' needs GPS positions in the photos' EXIF and none has one; "
                "use matcher 'exhaustive', 'sequential' or 'vocabtree'",
            )
        pairing = pycolmap.SpatialPairingOptions()
        pairing.num_threads = int(options.num_threads)
        pycolmap.match_spatial(database, pairing_options=pairing, **common)
    elif matcher == "vocabtree":
        pairing = pycolmap.VocabTreePairingOptions()
        pairing.vocab_tree_path = vocab
        pairing.num_threads = int(options.num_threads)
        pycolmap.match_vocabtree(database, pairing_options=pairing, **common)
    else:  # pragma: no cover - SfmOptions validates the choice
        raise ConfigError(f"unknown matcher {matcher!r}")


def _map(database: Path, images_dir: Path, output: Path, options: SfmOptions) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    if options.mapper == "incremental":
        pipeline = pycolmap.IncrementalPipelineOptions()
        pipeline.random_seed = int(options.seed)
        pipeline.num_threads = int(options.num_threads)
        pipeline.mapper.random_seed = int(options.seed)
        pipeline.mapper.num_threads = int(options.num_threads)
        pipeline.triangulation.random_seed = int(options.seed)
        return pycolmap.incremental_mapping(database, images_dir, output, pipeline)
    pipeline = pycolmap.GlobalPipelineOptions()
    pipeline.random_seed = int(options.seed)
    pipeline.num_threads = int(options.num_threads)
    mapper = pipeline.mapper
    mapper.random_seed = int(options.seed)
    mapper.num_threads = int(options.num_threads)
    mapper.rotation_averaging.random_seed = int(options.seed)
    mapper.global_positioning.random_seed = int(options.seed)
    mapper.global_positioning.use_gpu = False
    mapper.bundle_adjustment.ceres.use_gpu = False
    return pycolmap.global_mapping(database, images_dir, output, pipeline)


def run_sfm(images_dir: str | os.PathLike, work_dir: str | os.PathLike, options: SfmOptions | None = None) -> SfmResult:
    """Reconstruct cameras and sparse points from the photos under `images_dir`; files go to `work_dir`.

    Raises InputError for a missing folder, a folder without photos, a photo that does not decode, and
    when no model can be reconstructed.
    """
    from bigscene.scene.colmap import read_colmap

    options = options or SfmOptions()
    images_dir = Path(images_dir)
    work_dir = Path(work_dir)
    if not images_dir.is_dir():
        raise InputError(images_dir, "image folder does not exist")
    names = find_images(images_dir)
    if not names:
        raise InputError(images_dir, f"no photos in the folder (looked for {', '.join(IMAGE_EXTENSIONS)})")
    if len(names) < 2:
        raise InputError(images_dir, f"structure from motion needs at least 2 photos, found 1 ({names[0]})")
    matcher = _resolve_matcher(options, len(names))
    log.info("SfM on %d photos in %s: %s matching, %s mapping", len(names), images_dir, matcher, options.mapper)
    check_photos(images_dir, names, options.single_camera)

    work_dir.mkdir(parents=True, exist_ok=True)
    database = work_dir / "database.db"
    sparse = work_dir / "sparse"
    staging = work_dir / "mapper"
    for stale in (database, work_dir / "database.db-shm", work_dir / "database.db-wal"):
        stale.unlink(missing_ok=True)
    for stale_dir in (sparse, staging):
        if stale_dir.exists():
            shutil.rmtree(stale_dir)

    pycolmap.set_random_seed(int(options.seed))
    timings = {}
    with _colmap_logging():
        started = time.perf_counter()
        _extract(database, images_dir, names, options)
        timings["features"] = time.perf_counter() - started
        log.info("extracted features from %d photos in %.1f s", len(names), timings["features"])

        started = time.perf_counter()
        _match(database, images_dir, matcher, options)
        timings["matching"] = time.perf_counter() - started
        db = pycolmap.Database.open(database)
        try:
            verified = db.num_verified_image_pairs()
        finally:
            db.close()
        log.info("%s matching: %d verified image pairs in %.1f s", matcher, verified, timings["matching"])

        started = time.perf_counter()
        models = _map(database, images_dir, staging, options)
        timings["mapping"] = time.perf_counter() - started

    models = [m for m in models.values() if m.num_reg_images() > 0]
    if not models:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(
            images_dir,
            f"SfM reconstructed no model from {len(names)} photos ({verified} verified image pairs); "
            "the photos need more overlap or texture",
        )
    models.sort(key=lambda m: (m.num_reg_images(), m.num_points3D()), reverse=True)
    for index, model in enumerate(models):
        out = sparse / str(index)
        out.mkdir(parents=True, exist_ok=True)
        model.write(out)
    shutil.rmtree(staging, ignore_errors=True)
    best = models[0]
    model_dir = sparse / "0"
    log.info(
        "%s mapping in %.1f s: %d model(s); kept the largest, %d of %d photos, %d points, %.3f px",
        options.mapper,
        timings["mapping"],
        len(models),
        best.num_reg_images(),
        len(names),
        best.num_points3D(),
        best.compute_mean_reprojection_error(),
    )

    registered = {best.image(image_id).name for image_id in best.reg_image_ids()}
    unregistered = [name for name in names if name not in registered]
    if unregistered:
        log.warning("%d of %d photos were not registered (first: %s)", len(unregistered), len(names), unregistered[0])
    scene = read_colmap(model_dir, image_root=images_dir).scene
    return SfmResult(
        scene=scene,
        total_images=len(names),
        registered_images=len(registered),
        mean_reprojection_error_px=float(best.compute_mean_reprojection_error()),
        points=int(best.num_points3D()),
        model_dir=model_dir,
        unregistered=unregistered,
    )
