"""`bigscene ingest` end to end through the CLI: summary, scene store, idempotence, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scenes import make_scene

from bigscene.cli import main
from bigscene.scene.colmap import write_colmap
from bigscene.scene.transforms import write_transforms
from bigscene.store import has_scene, read_scene


@pytest.fixture
def colmap_project(tmp_path: Path) -> Path:
    """A COLMAP project: images/ and sparse/0 (binary)."""
    project = tmp_path / "project"
    scene = make_scene(project)
    write_colmap(scene, project / "sparse" / "0", binary=True)
    return project


def summary_of(workspace: Path, stage: str) -> dict:
    return json.loads((workspace / f"{stage}.json").read_text())


def test_ingest_colmap_writes_normalised_scene_and_summary(colmap_project: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert main(["ingest", str(colmap_project), "-w", str(ws), "scene.roi_margin=0.2"]) == 0
    summary = summary_of(ws, "ingest")
    assert summary["format"] == "colmap"
    assert summary["images"] == 10 and summary["cameras"] == 5 and summary["points"] == 20
    assert summary["skipped_frames"] == 0
    scene = read_scene(ws)
    roi = np.array(summary["roi"])
    np.testing.assert_allclose(scene.roi, roi, atol=1e-6)
    np.testing.assert_allclose((roi[0] + roi[1]) / 2, 0.0, atol=1e-9)
    assert np.abs(roi).max() == pytest.approx(1.0)
    resolved = (ws / "ingest.config.yaml").read_text()
    assert "roi_margin: 0.2" in resolved
    # the stored transform maps the input camera centres onto the stored ones
    original = make_scene(tmp_path / "again")
    centres = original.c2w[:, :3, 3] @ scene.world_from_input[:3, :3].T + scene.world_from_input[:3, 3]
    by_name = {im.name: i for i, im in enumerate(scene.images)}
    for i, record in enumerate(original.images):
        np.testing.assert_allclose(scene.c2w[by_name[record.name], :3, 3], centres[i], atol=1e-9)


def test_second_run_is_a_no_op_and_other_scene_is_refused(colmap_project: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert main(["ingest", str(colmap_project), "-w", str(ws)]) == 0
    store_mtime = (ws / "scene.zarr" / "zarr.json").stat().st_mtime_ns
    assert main(["ingest", str(colmap_project), "-w", str(ws)]) == 0
    assert (ws / "scene.zarr" / "zarr.json").stat().st_mtime_ns == store_mtime

    other = tmp_path / "other"
    write_transforms(make_scene(other, per_camera=1, seed=3), other / "transforms.json")
    assert main(["ingest", str(other / "transforms.json"), "-w", str(ws)]) == 2
    assert summary_of(ws, "ingest")["format"] == "colmap"
    assert main(["ingest", str(other / "transforms.json"), "-w", str(ws), "--overwrite"]) == 0
    assert summary_of(ws, "ingest")["format"] == "transforms"
    assert len(read_scene(ws).images) == 5


def test_transforms_with_missing_frames_counts_them(tmp_path: Path) -> None:
    source = tmp_path / "src"
    write_transforms(make_scene(source), source / "transforms.json")
    (source / "images" / "frame_003.png").unlink()
    ws = tmp_path / "ws"
    assert main(["ingest", str(source), "-w", str(ws)]) == 0
    summary = summary_of(ws, "ingest")
    assert summary["format"] == "transforms"
    assert summary["images"] == 9 and summary["skipped_frames"] == 1


def test_corrupt_image_is_named_and_nothing_is_written(
    colmap_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = colmap_project / "images" / "frame_004.png"
    victim.write_bytes(victim.read_bytes()[:60])
    ws = tmp_path / "ws"
    assert main(["ingest", str(colmap_project), "-w", str(ws)]) == 2
    err = capsys.readouterr().err
    assert "frame_004.png" in err
    assert not has_scene(ws) and not (ws / "ingest.json").exists()


def test_image_of_wrong_size_is_an_error(colmap_project: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    victim = colmap_project / "images" / "frame_000.png"
    Image.new("RGB", (7, 5)).save(victim)
    assert main(["ingest", str(colmap_project), "-w", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert "frame_000.png" in err and "7x5" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "{missing}", "-w", "{ws}"], "no such file"),
        (["ingest", "{project}", "-w", "{ws}", "scene.nope=1"], "valid keys in [scene]"),
        (["ingest", "{project}", "-w", "{ws}", "--format", "neus"], "cameras"),
        (["sfm", "{missing}", "-w", "{ws}"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_message(
    args: list[str], message: str, colmap_project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = {"missing": str(tmp_path / "nowhere"), "ws": str(tmp_path / "ws"), "project": str(colmap_project)}
    assert main([a.format(**values) for a in args]) == 2
    assert message in capsys.readouterr().err


def test_console_script_help_for_every_stage() -> None:
    bigscene = Path(sys.executable).with_name("bigscene")
    for stage in ([], ["ingest"], ["sfm"]):
        done = subprocess.run([str(bigscene), *stage, "--help"], capture_output=True, text=True, check=True)
        assert "usage: bigscene" in done.stdout
        if stage:
            assert "--workspace" in done.stdout
