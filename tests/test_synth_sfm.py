"""Realism for real SfM: pycolmap's SIFT pipeline registers the `sfm` preset's views where they were rendered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bigscene.scene.geometry import align_similarity, apply_similarity
from bigscene.scene.sfm import SfmOptions, run_sfm
from bigscene.store import read_scene
from bigscene.synth import generate, make_config


@pytest.mark.slow
def test_sfm_preset_registers_and_places_the_cameras(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    generate(make_config("sfm", {"gt_mesh": False}), ws)
    truth = read_scene(ws)
    result = run_sfm(ws / "images", tmp_path / "sfm", SfmOptions(seed=0))

    assert result.total_images == len(truth.images) >= 25
    assert result.registered_images >= 0.9 * result.total_images, f"unregistered: {result.unregistered}"
    true_centres = dict(zip((im.name for im in truth.images), truth.camera_centres(), strict=True))
    names = [im.name for im in result.scene.images]
    estimated = result.scene.camera_centres()  # (R, 3) in SfM's arbitrary frame
    expected = np.array([true_centres[name] for name in names])
    aligned = apply_similarity(align_similarity(estimated, expected), estimated)
    errors = np.linalg.norm(aligned - expected, axis=1)
    extent = np.linalg.norm(expected.max(axis=0) - expected.min(axis=0))  # of the camera centres
    assert errors.max() < 0.01 * extent, f"worst camera {errors.max():.3f} of extent {extent:.1f}"
