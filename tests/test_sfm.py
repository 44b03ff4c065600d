"""Structure from motion through pycolmap: the kermit photos against Bundler's reference, and bad input."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bigscene.errors import ConfigError, InputError
from bigscene.scene.geometry import align_similarity, apply_similarity
from bigscene.scene.sfm import SfmOptions, SfmResult, find_images, run_sfm

KERMIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kermit"
KERMIT_IMAGES = KERMIT / "images"


def _need_kermit() -> None:
    if not (KERMIT_IMAGES.is_dir() and (KERMIT / "bundle.out").is_file()):
        pytest.skip(f"kermit test photos not found at {KERMIT} (shared test data, not shipped)")


def read_bundler(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Registered cameras of a Bundler v0.3 file as {image name: (centre (3,), OpenCV c2w rotation (3, 3))}.

    Bundler stores world-to-camera ``Xc = R X + t`` for a camera looking down -z with y up, one camera per
    image in file-name order, and f = 0 for an unregistered one.
    """
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    n_cameras = int(lines[0].split()[0])
    names = sorted(p.name for p in KERMIT_IMAGES.iterdir())
    assert len(names) == n_cameras
    cameras = {}
    for i in range(n_cameras):
        block = [[float(v) for v in line.split()] for line in lines[1 + 5 * i : 6 + 5 * i]]
        focal = block[0][0]
        R, t = np.array(block[1:4]), np.array(block[4])
        if focal == 0.0:
            continue
        c2w_rotation = (np.diag([1.0, -1.0, -1.0]) @ R).T  # Bundler camera (x right, y up, -z forward) -> OpenCV
        cameras[names[i]] = (-R.T @ t, c2w_rotation)
    return cameras


def read_bundler_points(path: Path) -> np.ndarray:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    n_cameras, n_points = (int(v) for v in lines[0].split())
    start = 1 + 5 * n_cameras
    return np.array([[float(v) for v in lines[start + 3 * j].split()] for j in range(n_points)])


@pytest.fixture(scope="module")
def kermit_sfm(tmp_path_factory) -> tuple[SfmResult, float]:
    _need_kermit()
    work = tmp_path_factory.mktemp("kermit_sfm")
    started = time.perf_counter()
    result = run_sfm(KERMIT_IMAGES, work, SfmOptions())
    seconds = time.perf_counter() - started
    print(f"\nSfM on kermit: {seconds:.1f} s, {result.registered_images}/{result.total_images} registered")
    return result, seconds


def test_kermit_registers_nearly_all_photos_accurately(kermit_sfm):
    result, _ = kermit_sfm
    assert result.total_images == 11
    assert result.registered_images >= 9
    assert result.mean_reprojection_error_px < 1.0
    assert result.points > 200
    assert len(result.unregistered) == result.total_images - result.registered_images
    scene = result.scene
    assert len(scene.images) == result.registered_images
    assert len(scene.points) == result.points
    assert [im.name for im in scene.images] == sorted(im.name for im in scene.images)
    assert Path(scene.image_root) == KERMIT_IMAGES
    assert set(im.name for im in scene.images) | set(result.unregistered) == set(find_images(KERMIT_IMAGES))
    # one shared SIMPLE_RADIAL camera, calibrated in full-resolution pixels
    assert len(scene.cameras) == 1
    camera = next(iter(scene.cameras.values()))
    assert camera.model == "SIMPLE_RADIAL" and (camera.width, camera.height) == (640, 480)
    assert 600 < camera.focal[0] < 800  # Bundler's estimates range over 637-729 px
    assert (result.model_dir / "cameras.bin").is_file() and result.model_dir.name == "0"
    assert np.all(np.isfinite(scene.c2w)) and np.all(scene.points.track_length >= 2)


def test_kermit_cameras_match_bundler_up_to_a_similarity(kermit_sfm):
    result, _ = kermit_sfm
    reference = read_bundler(KERMIT / "bundle.out")
    ours = {im.name: i for i, im in enumerate(result.scene.images)}
    common = sorted(set(reference) & set(ours))
    assert len(common) >= 8
    src = np.array([result.scene.c2w[ours[n], :3, 3] for n in common])
    dst = np.array([reference[n][0] for n in common])
    T = align_similarity(src, dst)
    errors = np.linalg.norm(apply_similarity(T, src) - dst, axis=1)
    # the scene extent: the bounding box of Bundler's cameras and its points' 1-99 percentile box
    lo, hi = np.percentile(read_bundler_points(KERMIT / "bundle.out"), [1, 99], axis=0)
    everything = np.vstack([dst, lo, hi])
    extent = float(np.linalg.norm(everything.max(axis=0) - everything.min(axis=0)))
    assert errors.max() < 0.02 * extent, f"centre errors {errors / extent * 100} % of extent"
    # relative orientations agree too (frame-independent: R_i^T R_j)
    worst = 0.0
    for a in range(len(common)):
        for b in range(a + 1, len(common)):
            Ra, Rb = (result.scene.c2w[ours[common[k]], :3, :3] for k in (a, b))
            Qa, Qb = reference[common[a]][1], reference[common[b]][1]
            d = (Ra.T @ Rb).T @ (Qa.T @ Qb)
            worst = max(worst, math.degrees(math.acos(np.clip((np.trace(d) - 1) / 2, -1, 1))))
    assert worst < 2.0


def test_kermit_points_reproject_onto_their_keypoints(kermit_sfm):
    """The Scene's cameras and poses reproduce COLMAP's observations through bigscene's own projection."""
    pycolmap = pytest.importorskip("pycolmap")
    result, _ = kermit_sfm
    recon = pycolmap.Reconstruction(result.model_dir)
    index = {im.name: i for i, im in enumerate(result.scene.images)}
    residuals = []
    for image in recon.images.values():
        if not image.has_pose:
            continue
        i = index[image.name]
        observed = [(p.xy, recon.points3D[p.point3D_id].xyz) for p in image.points2D if p.has_point3D()]
        xy = np.array([o[0] for o in observed])
        world = np.array([o[1] for o in observed])
        c2w = result.scene.c2w[i]
        cam = (world - c2w[:3, 3]) @ c2w[:3, :3]
        projected = result.scene.camera_of(i).project(torch.from_numpy(cam)).numpy()
        residuals.append(np.linalg.norm(projected - xy, axis=1))
    residuals = np.concatenate(residuals)
    assert residuals.mean() == pytest.approx(result.mean_reprojection_error_px, rel=0.05)
    assert np.median(residuals) < 1.0


@pytest.mark.slow
def test_single_threaded_sfm_is_repeatable(tmp_path):
    _need_kermit()
    options = SfmOptions(num_threads=1, seed=3)
    a = run_sfm(KERMIT_IMAGES, tmp_path / "a", options)
    b = run_sfm(KERMIT_IMAGES, tmp_path / "b", options)
    assert [im.name for im in a.scene.images] == [im.name for im in b.scene.images]
    np.testing.assert_array_equal(a.scene.c2w, b.scene.c2w)
    np.testing.assert_array_equal(a.scene.points.xyz, b.scene.points.xyz)


def test_rerun_in_the_same_work_dir_starts_afresh(kermit_sfm, tmp_path):
    result, _ = kermit_sfm
    work = tmp_path / "work"
    shutil.copytree(result.model_dir.parent.parent, work)  # the fixture's database and model
    (work / "sparse" / "7").mkdir()  # a stale smaller model and a stale staging folder
    (work / "mapper" / "0").mkdir(parents=True)
    again = run_sfm(KERMIT_IMAGES, work, SfmOptions(matcher="sequential"))
    assert again.model_dir == work / "sparse" / "0"
    assert again.registered_images >= 9
    assert not (work / "mapper").exists() and not (work / "sparse" / "7").exists()


def test_global_mapper(tmp_path):
    _need_kermit()
    result = run_sfm(KERMIT_IMAGES, tmp_path / "work", SfmOptions(mapper="global"))
    assert result.registered_images >= 9
    assert result.mean_reprojection_error_px < 1.0


def _with_gps(folder: Path) -> Path:
    """The kermit photos with EXIF GPS positions a few metres apart."""
    from PIL.TiffImagePlugin import IFDRational

    folder.mkdir()
    for i, name in enumerate(sorted(find_images(KERMIT_IMAGES))):
        with Image.open(KERMIT_IMAGES / name) as im:
            exif = im.getexif()
            exif[0x8825] = {  # GPS IFD: 47 22' N, 8 33' E, 400 m
                1: "N",
                2: (IFDRational(47), IFDRational(22), IFDRational(10 + i / 10)),
                3: "E",
                4: (IFDRational(8), IFDRational(33), IFDRational(5)),
                5: b"\x00",
                6: IFDRational(400),
            }
            im.save(folder / name, exif=exif.tobytes(), quality=95)
    return folder


def test_spatial_matcher_with_gps(tmp_path):
    _need_kermit()
    result = run_sfm(_with_gps(tmp_path / "photos"), tmp_path / "work", SfmOptions(matcher="spatial"))
    assert result.registered_images >= 9
    assert result.mean_reprojection_error_px < 1.0


# --- bad input -----------------------------------------------------------------------------------------


def _write_photos(folder: Path, n: int, size=(96, 64), seed=0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"photo{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="image folder does not exist") as info:
        run_sfm(tmp_path / "nope", tmp_path / "work")
    assert info.value.path == str(tmp_path / "nope")


def test_folder_without_photos(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    with pytest.raises(InputError, match="no photos") as info:
        run_sfm(tmp_path / "photos", tmp_path / "work")
    assert info.value.path == str(tmp_path / "photos")
    _write_photos(tmp_path / "one", 1)
    with pytest.raises(InputError, match="at least 2 photos"):
        run_sfm(tmp_path / "one", tmp_path / "work")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_jpeg_among_photos_is_named(tmp_path, damage):
    photos = _write_photos(tmp_path / "photos", 4)
    bad = photos[2]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError) as info:
        run_sfm(tmp_path / "photos", tmp_path / "work")
    assert info.value.path == str(bad)
    assert not (tmp_path / "work" / "database.db").exists()  # nothing ran


def test_mixed_sizes_with_a_single_camera(tmp_path):
    _write_photos(tmp_path / "photos", 2, size=(96, 64))
    odd = _write_photos(tmp_path / "other", 1, size=(64, 96))[0]
    target = tmp_path / "photos" / "zz.jpg"
    odd.rename(target)
    with pytest.raises(InputError, match="single_camera") as info:
        run_sfm(tmp_path / "photos", tmp_path / "work")
    assert info.value.path == str(target)


def test_no_model_is_an_input_error(tmp_path):
    """Unrelated noise photos share no geometry: no model, and an error saying so."""
    _write_photos(tmp_path / "photos", 3, size=(160, 120), seed=7)
    with pytest.raises(InputError, match="reconstructed no model from 3 photos"):
        run_sfm(tmp_path / "photos", tmp_path / "work")


def test_vocabtree_needs_a_vocabulary(tmp_path):
    with pytest.raises(ConfigError, match="vocab_tree_path"):
        SfmOptions(matcher="vocabtree")
    _write_photos(tmp_path / "photos", 2)
    missing = tmp_path / "vocab.bin"
    with pytest.raises(InputError, match="vocabulary tree file does not exist") as info:
        run_sfm(tmp_path / "photos", tmp_path / "work", SfmOptions(matcher="vocabtree", vocab_tree_path=missing))
    assert info.value.path == str(missing)


def test_spatial_matching_needs_gps(tmp_path):
    _write_photos(tmp_path / "photos", 2)
    with pytest.raises(InputError, match="GPS"):
        run_sfm(tmp_path / "photos", tmp_path / "work", SfmOptions(matcher="spatial"))


def test_bad_options_are_config_errors():
    for kwargs in (
        {"matcher": "fancy"},
        {"mapper": "hierarchical"},
        {"camera_model": "OPENCV_FISHEYE"},
        {"max_image_size": 0},
        {"num_threads": 0},
    ):
        with pytest.raises(ConfigError):
            SfmOptions(**kwargs)
    assert SfmOptions(vocab_tree_path="").vocab_tree_path is None


def test_find_images_is_recursive_sorted_and_skips_other_files(tmp_path):
    for rel in ["b.JPG", "a.png", "sub/c.jpeg", ".hidden/d.jpg", "notes.txt", ".e.jpg"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert find_images(tmp_path) == ["a.png", "b.JPG", "sub/c.jpeg"]


def test_matcher_auto_picks_by_collection_size():
    from bigscene.scene.sfm import _resolve_matcher

    assert _resolve_matcher(SfmOptions(), 200) == "exhaustive"
    assert _resolve_matcher(SfmOptions(), 201) == "sequential"
    assert _resolve_matcher(SfmOptions(matcher="exhaustive"), 5000) == "exhaustive"
