"""Readers and writers into the Scene model: round trips, conventions, and bad input, on real files."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image
from scenes import CAMERAS, GL_FROM_CV, look_at, make_scene, write_png

from bigscene.errors import InputError
from bigscene.scene import Camera, ImageRecord, Scene
from bigscene.scene.colmap import read_colmap, write_colmap
from bigscene.scene.formats import detect_format, read_scene
from bigscene.scene.images import check_images, image_size, load_image
from bigscene.scene.neus import decompose_projection, read_neus, write_neus
from bigscene.scene.transforms import read_blender, read_transforms, write_transforms


def assert_same_images(read: Scene, scene: Scene, atol: float = 1e-6) -> None:
    """Same image files (resolved), same intrinsics per image, same poses."""
    assert len(read.images) == len(scene.images)
    order = {str((Path(scene.image_root) / im.name).resolve()): i for i, im in enumerate(scene.images)}
    for index, record in enumerate(read.images):
        source = order[str((Path(read.image_root) / record.name).resolve())]
        assert read.cameras[record.camera_id] == scene.camera_of(source)
        np.testing.assert_allclose(read.c2w[index], scene.c2w[source], atol=atol)


# ---------------------------------------------------------------------------------------- COLMAP


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_round_trip(tmp_path: Path, binary: bool) -> None:
    scene = make_scene(tmp_path)
    model_dir = tmp_path / "sparse" / "0"
    write_colmap(scene, model_dir, binary=binary)
    ext = ".bin" if binary else ".txt"
    assert {p.name for p in model_dir.iterdir()} == {
        f"{n}{ext}" for n in ("cameras", "images", "points3D", "rigs", "frames")
    }
    assert not list(tmp_path.glob("sparse/.*")), "no staging directory left behind"

    result = read_colmap(model_dir)
    read = result.scene
    assert result.skipped == []
    assert Path(read.image_root) == tmp_path / "images"
    assert read.cameras == scene.cameras  # ids kept, float64 parameters exact
    assert [im.name for im in read.images] == sorted(im.name for im in scene.images)
    assert [im.appearance_id for im in read.images] == list(range(len(scene.images)))
    assert_same_images(read, scene)
    np.testing.assert_array_equal(read.points.xyz, scene.points.xyz)
    np.testing.assert_array_equal(read.points.rgb, scene.points.rgb)
    np.testing.assert_array_equal(read.points.error, scene.points.error)
    np.testing.assert_array_equal(read.points.track_length, scene.points.track_length)


def test_colmap_overwrite_replaces_other_kind(tmp_path: Path) -> None:
    scene = make_scene(tmp_path, {2: CAMERAS[2]})
    model_dir = tmp_path / "sparse" / "0"
    write_colmap(scene, model_dir, binary=True)
    scene.c2w[0, :3, 3] += 1.0
    write_colmap(scene, model_dir, binary=False)
    assert not list(model_dir.glob("*.bin"))
    np.testing.assert_allclose(read_colmap(model_dir).scene.c2w, scene.c2w, atol=1e-9)


def _write_colmap3(model_dir: Path, camera_line: str, image_lines: list[str], points_lines: list[str]) -> None:
    """A COLMAP 3.x text model: cameras.txt, images.txt, points3D.txt and nothing else."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "cameras.txt").write_text("# Camera list with one line of data per camera:\n" + camera_line)
    (model_dir / "images.txt").write_text("# Image list with two lines of data per image:\n" + "".join(image_lines))
    (model_dir / "points3D.txt").write_text(
        "# 3D point list with one line of data per point:\n" + "".join(points_lines)
    )


def test_colmap3_three_file_model(tmp_path: Path) -> None:
    model_dir = tmp_path / "sparse" / "0"
    # image 5: 90 degrees about z (qw = qz = sqrt(1/2)); image 2: identity rotation
    half = math.sqrt(0.5)
    _write_colmap3(
        model_dir,
        "3 PINHOLE 40 30 31.5 33.25 20.5 14.75\n",
        [f"5 {half} 0 0 {half} 1 2 3 3 b.png\n10.5 12.5 1\n", "2 1 0 0 0 0 0 4 3 a.png\n8.0 9.0 1\n"],
        ["1 0.25 -0.5 2 10 20 30 0.75 5 0 2 0\n"],
    )
    for name in ("a.png", "b.png"):
        write_png(tmp_path / "images" / name, 40, 30)
    scene = read_colmap(model_dir).scene

    assert [im.name for im in scene.images] == ["a.png", "b.png"]
    assert [im.camera_id for im in scene.images] == [3, 3]
    assert scene.cameras[3] == Camera.pinhole(31.5, 33.25, 20.5, 14.75, 40, 30)
    np.testing.assert_allclose(scene.c2w[0], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -4], [0, 0, 0, 1]], atol=1e-12)
    rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # cam_from_world rotation of b.png
    np.testing.assert_allclose(scene.c2w[1][:3, :3], rz.T, atol=1e-12)
    np.testing.assert_allclose(scene.c2w[1][:3, 3], -rz.T @ [1.0, 2.0, 3.0], atol=1e-12)
    np.testing.assert_array_equal(scene.points.xyz, [[0.25, -0.5, 2.0]])
    np.testing.assert_array_equal(scene.points.rgb, [[10, 20, 30]])
    np.testing.assert_array_equal(scene.points.track_length, [2])
    np.testing.assert_allclose(scene.points.error, [0.75])


def test_colmap_skips_missing_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scene = make_scene(tmp_path, {2: CAMERAS[2]}, per_camera=4)
    write_colmap(scene, tmp_path / "sparse" / "0")
    (tmp_path / "images" / "frame_001.png").unlink()
    with caplog.at_level(logging.WARNING):
        result = read_colmap(tmp_path / "sparse" / "0")
    assert result.skipped == ["frame_001.png"]
    assert [im.appearance_id for im in result.scene.images] == [0, 1, 2]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    with pytest.raises(InputError, match="none of the 4 images") as info:
        read_colmap(tmp_path / "sparse" / "0", image_root=tmp_path / "nowhere")
    assert info.value.path == str(tmp_path / "nowhere")


# ------------------------------------------------------------------------------ transforms.json


def test_transforms_round_trip_per_frame_intrinsics(tmp_path: Path) -> None:
    scene = make_scene(tmp_path)
    scene.images[1].split = "val"
    scene.images[4].split = "test"
    path = tmp_path / "transforms.json"
    write_transforms(scene, path)
    meta = json.loads(path.read_text())
    assert "fl_x" not in meta and "fl_x" in meta["frames"][0]
    assert meta["frames"][0]["file_path"] == "images/frame_000.png"
    assert meta["val_filenames"] == ["images/frame_001.png"]

    result = read_transforms(path)
    read = result.scene
    assert result.skipped == []
    assert [im.name for im in read.images] == [f"images/{im.name}" for im in scene.images]
    assert [im.split for im in read.images] == [im.split for im in scene.images]
    assert len(read.cameras) == len(scene.cameras)
    assert_same_images(read, scene)


def test_transforms_round_trip_shared_intrinsics(tmp_path: Path) -> None:
    scene = make_scene(tmp_path, {9: CAMERAS[9]}, per_camera=3)
    path = tmp_path / "out" / "transforms.json"
    write_transforms(scene, path)
    meta = json.loads(path.read_text())
    assert meta["camera_model"] == "OPENCV" and meta["k1"] == 0.011 and "fl_x" not in meta["frames"][0]
    assert meta["frames"][0]["file_path"] == "../images/frame_000.png"
    read = read_transforms(path.parent).scene
    assert list(read.cameras.values()) == [CAMERAS[9]]
    assert_same_images(read, scene)


def test_transforms_instant_ngp_style(tmp_path: Path) -> None:
    """camera_angle_x, no w/h (size from the first image), no extension, OpenGL matrices."""
    write_png(tmp_path / "rgb" / "0.jpg", 20, 10)
    write_png(tmp_path / "rgb" / "1.jpg", 20, 10, seed=1)
    c2w = look_at(np.array([0.0, -3.0, 1.0]), np.random.default_rng(3))
    frames = [{"file_path": f"./rgb/{i}", "transform_matrix": (c2w @ GL_FROM_CV).tolist()} for i in range(2)]
    angle = 0.9
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    scene = read_transforms(tmp_path / "transforms.json").scene
    focal = 10.0 / math.tan(angle / 2)
    assert [im.name for im in scene.images] == ["rgb/0.jpg", "rgb/1.jpg"]
    assert scene.cameras == {1: Camera.pinhole(focal, focal, 10.0, 5.0, 20, 10)}
    np.testing.assert_allclose(scene.c2w[0], c2w, atol=1e-12)


# ------------------------------------------------------------------------------------ conventions


def test_conventions_agree_across_formats(tmp_path: Path) -> None:
    """One camera written as COLMAP, transforms.json and NeuS reads back as the same c2w and K."""
    camera = Camera.pinhole(35.0, 36.0, 20.0, 15.0, 40, 30)
    c2w = look_at(np.array([1.0, -3.5, 2.0]), np.random.default_rng(7))
    write_png(tmp_path / "images" / "view.png", 40, 30)
    scene = Scene({1: camera}, [ImageRecord("view.png", 1, 0)], c2w[None], image_root=str(tmp_path / "images"))

    write_colmap(scene, tmp_path / "sparse" / "0")
    write_transforms(scene, tmp_path / "transforms.json")
    write_neus(scene, tmp_path / "neus")
    write_png(tmp_path / "neus" / "image" / "000.png", 40, 30)

    # the json holds OpenGL: the camera looks down its -z axis, at the origin
    gl = np.array(json.loads((tmp_path / "transforms.json").read_text())["frames"][0]["transform_matrix"])
    toward_origin = -gl[:3, 3] / np.linalg.norm(gl[:3, 3])
    np.testing.assert_allclose(-gl[:3, 2], toward_origin, atol=1e-12)

    for read in (
        read_colmap(tmp_path / "sparse" / "0").scene,
        read_transforms(tmp_path / "transforms.json").scene,
        read_neus(tmp_path / "neus").scene,
    ):
        np.testing.assert_allclose(read.c2w[0], c2w, atol=1e-6)
        np.testing.assert_allclose(read.camera_of(0).K, camera.K, atol=1e-6)
        # the origin projects where the camera's optical axis meets the image: its principal point
        w2c = np.linalg.inv(read.c2w[0])
        pixel = read.camera_of(0).K @ w2c[:3, 3]
        np.testing.assert_allclose(pixel[:2] / pixel[2], [20.0, 15.0], atol=1e-6)


# ---------------------------------------------------------------------------------------- Blender


def test_blender_composites_rgba_and_keeps_splits(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 128)  # half-transparent red
    rgba[1, 1] = (0, 0, 255, 255)  # opaque blue; everything else fully transparent
    angle = 0.69
    for split, count in (("train", 2), ("test", 1)):
        frames = []
        for i in range(count):
            (tmp_path / split).mkdir(exist_ok=True)
            Image.fromarray(rgba, "RGBA").save(tmp_path / split / f"r_{i}.png")
            c2w = look_at(np.array([0.0, 4.0, 1.0 + i]), np.random.default_rng(i))
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": (c2w @ GL_FROM_CV).tolist()})
        (tmp_path / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))

    scene = read_blender(tmp_path, background=(1.0, 1.0, 1.0)).scene
    assert [(im.name, im.split) for im in scene.images] == [
        ("train/r_0.png", "train"),
        ("train/r_1.png", "train"),
        ("test/r_0.png", "test"),
    ]
    assert scene.background == (1.0, 1.0, 1.0)
    focal = 4.0 / math.tan(angle / 2)
    assert scene.cameras == {1: Camera.pinhole(focal, focal, 4.0, 4.0, 8, 8)}
    pixels = load_image(Path(scene.image_root) / scene.images[2].name, scene.background)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert tuple(pixels[0, 0]) == (255, 127, 127)  # 255 * 0.5 + 255 * 0.5, 0 * 0.5 + 255 * 127 / 255
    assert tuple(pixels[1, 1]) == (0, 0, 255)
    assert tuple(pixels[5, 5]) == (255, 255, 255)
    assert tuple(load_image(tmp_path / "train" / "r_0.png")[0, 0]) == (
        255,
        0,
        0,
    )  # no background: alpha dropped


# ------------------------------------------------------------------------------------------- NeuS


def test_neus_scale_mat_sets_the_scene_frame(tmp_path: Path) -> None:
    """P = world_mat @ scale_mat: poses land in the unit-sphere frame; world_from_input undoes scale_mat."""
    camera = Camera.pinhole(30.0, 30.0, 16.0, 12.0, 32, 24)
    c2w_world = look_at(np.array([5.0, 1.0, 6.0]), np.random.default_rng(1), target=np.array([2.0, 1.0, 3.0]))
    scale_mat = np.array([[2.5, 0, 0, 2.0], [0, 2.5, 0, 1.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])
    k4 = np.eye(4)
    k4[:3, :3] = camera.K
    world_mat = 3.0 * k4 @ np.linalg.inv(c2w_world)  # NeuS matrices carry an arbitrary scale
    np.savez(tmp_path / "cameras_sphere.npz", world_mat_0=world_mat, scale_mat_0=scale_mat)
    write_png(tmp_path / "image" / "000.png", 32, 24)

    scene = read_neus(tmp_path).scene
    np.testing.assert_allclose(scene.world_from_input, np.linalg.inv(scale_mat), atol=1e-12)
    np.testing.assert_allclose(scene.camera_of(0).K, camera.K, atol=1e-9)
    np.testing.assert_allclose(scene.c2w[0][:3, :3], c2w_world[:3, :3], atol=1e-9)
    np.testing.assert_allclose(scene.c2w[0][:3, 3], (c2w_world[:3, 3] - [2.0, 1.0, 3.0]) / 2.5, atol=1e-9)

    k, c2w = decompose_projection(-world_mat[:3])  # a negative scale gives the same camera
    np.testing.assert_allclose(k, camera.K, atol=1e-9)
    np.testing.assert_allclose(c2w, c2w_world, atol=1e-9)


@pytest.fixture
def neus_mismatch(tmp_path: Path) -> Path:
    """K for 64x48 images (principal point at the centre) but 32x24 images on disk."""
    camera = Camera.pinhole(50.0, 52.0, 32.0, 24.0, 64, 48)
    poses = np.stack([look_at(np.array([0.0, -4.0, float(z)]), np.random.default_rng(z)) for z in (1, 2)])
    scene = Scene({1: camera}, [ImageRecord(f"{i}.png", 1, i) for i in range(2)], poses)
    write_neus(scene, tmp_path)
    for i in range(2):
        write_png(tmp_path / "image" / f"{i}.png", 32, 24, seed=i)
    return tmp_path


def test_neus_mismatch_error(neus_mismatch: Path) -> None:
    with pytest.raises(InputError) as info:
        read_neus(neus_mismatch)
    message = str(info.value)
    assert info.value.path == str(neus_mismatch / "image" / "0.png")
    assert "32x24" in message and "64x48" in message and "image_mismatch='resize'" in message


@pytest.mark.parametrize(("mode", "params"), [("resize", (25.0, 26.0, 16.0, 12.0)), ("crop", (50.0, 52.0, 16.0, 12.0))])
def test_neus_mismatch_resize_and_crop(neus_mismatch: Path, mode: str, params: tuple[float, ...]) -> None:
    scene = read_neus(neus_mismatch, image_mismatch=mode).scene
    assert [im.camera_id for im in scene.images] == [1, 1]  # decomposed K agree to 1e-6: one camera
    (camera,) = scene.cameras.values()
    assert (camera.model, camera.width, camera.height) == ("PINHOLE", 32, 24)
    np.testing.assert_allclose(camera.params, params, atol=1e-9)


# -------------------------------------------------------------------------------- format detection


def test_detect_and_read_scene(tmp_path: Path) -> None:
    scene = make_scene(tmp_path / "colmap", {2: CAMERAS[2]})
    write_colmap(scene, tmp_path / "colmap" / "sparse" / "0")
    write_transforms(scene, tmp_path / "colmap" / "images" / "transforms.json")
    assert detect_format(tmp_path / "colmap") == "colmap"
    assert detect_format(tmp_path / "colmap" / "images") == "transforms"
    assert detect_format(tmp_path / "colmap" / "images" / "transforms.json") == "transforms"
    assert len(read_scene(tmp_path / "colmap").scene.images) == 2
    assert len(read_scene(tmp_path / "colmap" / "images", "transforms").scene.images) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="transforms_train.json") as info:
        detect_format(tmp_path / "empty")
    assert info.value.path == str(tmp_path / "empty")


# --------------------------------------------------------------------------------------- bad input


def test_transforms_missing_images_warn_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scene = make_scene(tmp_path, {2: CAMERAS[2]}, per_camera=4)
    write_transforms(scene, tmp_path / "transforms.json")
    for name in ("frame_001.png", "frame_003.png"):
        (tmp_path / "images" / name).unlink()
    with caplog.at_level(logging.WARNING):
        result = read_transforms(tmp_path / "transforms.json")
    assert result.skipped == ["images/frame_001.png", "images/frame_003.png"]
    assert [im.name for im in result.scene.images] == ["images/frame_000.png", "images/frame_002.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipping 2 of 4 frames" in warnings[0]

    for name in ("frame_000.png", "frame_002.png"):
        (tmp_path / "images" / name).unlink()
    with pytest.raises(InputError, match="none of the 4 images") as info:
        read_transforms(tmp_path / "transforms.json")
    assert info.value.path == str(tmp_path)


def test_check_images(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 4, 4)
    assert check_images(tmp_path, ["a.png", "b.png"]) == ["b.png"]


def test_image_loading(tmp_path: Path) -> None:
    write_png(tmp_path / "grey.png", 6, 4, mode="L")
    grey = load_image(tmp_path / "grey.png")
    assert grey.shape == (4, 6, 3) and np.array_equal(grey[..., 0], grey[..., 2])
    assert image_size(tmp_path / "grey.png") == (6, 4)

    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "photo.jpg", quality=95)
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as info:
        load_image(tmp_path / "truncated.jpg")
    assert str(tmp_path / "truncated.jpg") in str(info.value)

    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    for reader in (load_image, image_size):
        with pytest.raises(InputError, match="junk.png"):
            reader(tmp_path / "junk.png")
        with pytest.raises(InputError, match="no such image file"):
            reader(tmp_path / "absent.png")


def test_colmap_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as info:
        read_colmap(tmp_path / "nope")
    assert info.value.path == str(tmp_path / "nope")
    (tmp_path / "bare").mkdir()
    with pytest.raises(InputError, match="no COLMAP model") as info:
        read_colmap(tmp_path / "bare")
    assert info.value.path == str(tmp_path / "bare")

    _write_colmap3(tmp_path / "empty", "", [], [])
    with pytest.raises(InputError, match="empty COLMAP model") as info:
        read_colmap(tmp_path / "empty")
    assert info.value.path == str(tmp_path / "empty")

    _write_colmap3(tmp_path / "unregistered", "1 PINHOLE 40 30 31.5 33.25 20.5 14.75\n", [], [])
    with pytest.raises(InputError, match="no registered image") as info:
        read_colmap(tmp_path / "unregistered")
    assert info.value.path == str(tmp_path / "unregistered")


def _pycolmap_model(model_dir: Path, params: list[float], translation: list[float]) -> None:
    """A binary model of one PINHOLE camera and one image, written by pycolmap itself."""
    reconstruction = pycolmap.Reconstruction()
    reconstruction.add_camera_with_trivial_rig(
        pycolmap.Camera(model="PINHOLE", width=40, height=30, params=params, camera_id=1)
    )
    image = pycolmap.Image(name="a.png", camera_id=1, image_id=1)
    pose = pycolmap.Rigid3d(np.hstack([np.eye(3), np.array(translation)[:, None]]))
    reconstruction.add_image_with_trivial_frame(image, pose)
    model_dir.mkdir(parents=True)
    reconstruction.write(model_dir)


def test_colmap_non_finite(tmp_path: Path) -> None:
    write_png(tmp_path / "images" / "a.png", 40, 30)
    _pycolmap_model(tmp_path / "pose" / "0", [30.0, 30.0, 20.0, 15.0], [0.0, float("nan"), 1.0])
    with pytest.raises(InputError, match="non-finite camera pose") as info:
        read_colmap(tmp_path / "pose" / "0", image_root=tmp_path / "images")
    assert info.value.path == str(tmp_path / "pose" / "0")

    _pycolmap_model(tmp_path / "intrinsics" / "0", [30.0, float("nan"), 20.0, 15.0], [0.0, 0.0, 1.0])
    with pytest.raises(InputError, match="non-finite intrinsics") as info:
        read_colmap(tmp_path / "intrinsics" / "0", image_root=tmp_path / "images")
    assert info.value.path == str(tmp_path / "intrinsics" / "0")

    # in text, pycolmap itself refuses a NaN parameter; still an InputError naming the model
    _write_colmap3(tmp_path / "text", "1 PINHOLE 40 30 30 nan 20 15\n", ["1 1 0 0 0 0 0 1 1 a.png\n\n"], [])
    with pytest.raises(InputError, match="cannot read COLMAP model") as info:
        read_colmap(tmp_path / "text", image_root=tmp_path / "images")
    assert info.value.path == str(tmp_path / "text")


@pytest.mark.parametrize(
    "camera_line",
    ["1 FULL_OPENCV 40 30 30 30 20 15 0 0 0 0 0 0 0 0\n", "1 OPENCV_FISHEYE 40 30 30 30 20 15 0 0 0 0\n"],
)
def test_colmap_unsupported_camera_model(tmp_path: Path, camera_line: str) -> None:
    write_png(tmp_path / "images" / "a.png", 40, 30)
    _write_colmap3(tmp_path / "sparse" / "0", camera_line, ["1 1 0 0 0 0 0 1 1 a.png\n\n"], [])
    with pytest.raises(InputError, match="unsupported model") as info:
        read_colmap(tmp_path / "sparse" / "0")
    assert info.value.path == str(tmp_path / "sparse" / "0")
    assert "SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV" in str(info.value)


def test_transforms_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({"fl_x": 30.0, "w": 40, "h": 30, "frames": []}))
    with pytest.raises(InputError, match="no frames") as info:
        read_transforms(path)
    assert info.value.path == str(path)

    write_png(tmp_path / "a.png", 40, 30)
    matrix = np.eye(4)
    matrix[1, 3] = np.nan
    path.write_text(
        json.dumps(
            {
                "fl_x": 30.0,
                "w": 40,
                "h": 30,
                "frames": [{"file_path": "a.png", "transform_matrix": matrix.tolist()}],
            }
        )
    )
    with pytest.raises(InputError, match="frame a.png: non-finite transform_matrix") as info:
        read_transforms(path)
    assert info.value.path == str(path)

    path.write_text(
        json.dumps(
            {
                "fl_x": 30.0,
                "w": 40,
                "h": 30,
                "camera_model": "OPENCV_FISHEYE",
                "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}],
            }
        )
    )
    with pytest.raises(InputError, match="unsupported camera_model 'OPENCV_FISHEYE'"):
        read_transforms(path)
