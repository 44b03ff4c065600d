"""`bigscene run` end to end on the `tiny` synthetic city (configs/synthetic_tiny.yaml, 48x36 images): geometry
and images against ground truth, a second run that does nothing, and a deleted block that alone is retrained."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bigscene.cli import main
from bigscene.config import load_config
from bigscene.errors import ConfigError, InputError
from bigscene.pipeline import RUN_NAME, RunResult, Source, run_pipeline

SYNTH = {"width": "48", "height": "36", "gt_voxel": "0.5"}
CONFIG = "synthetic_tiny"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: small ops on a shared 2-core machine run far faster without thread hand-offs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rerun(ws: Path) -> RunResult:
    return run_pipeline(str(ws), load_config(CONFIG), Source("synth", "tiny", SYNTH))


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole pipeline once, through the command line."""
    ws = tmp_path_factory.mktemp("run")
    argv = ["run", CONFIG, "--synth", "tiny", "-w", str(ws), *(f"synth.{k}={v}" for k, v in SYNTH.items())]
    assert main(argv) == 0
    return ws


def test_run_meshes_and_renders_the_city_against_ground_truth(city: Path) -> None:
    doc = json.loads((city / RUN_NAME).read_text())
    assert list(doc["stages"]) == ["synth", "partition", "train", "merge", "mesh", "render", "eval"]
    assert not any(stage["skipped"] for stage in doc["stages"].values())
    assert Path(doc["files"]["mesh"]).stat().st_size > 0
    assert Path(doc["files"]["partition map"]).is_file() and Path(doc["files"]["camera path"]).is_file()
    assert list((Path(doc["files"]["renders"]) / "views").glob("*_rgb.png"))
    assert doc["fscore"] > 0.25, doc
    assert doc["psnr"] > doc["psnr_untrained"] + 0.5, doc


def test_second_run_is_a_no_op(city: Path) -> None:
    before = json.loads((city / RUN_NAME).read_text())
    result = rerun(city)
    assert all(stage.skipped for stage in result.stages), [(s.name, s.skipped) for s in result.stages]
    assert sum(stage.seconds for stage in result.stages) < 30
    assert (result.psnr, result.fscore) == (before["psnr"], before["fscore"])


def test_deleting_one_block_retrains_only_it_and_merges_again(city: Path) -> None:
    records = json.loads((city / "train.json").read_text())["records"]
    block = city / "blocks" / "b001"
    shutil.rmtree(block / "ckpt")
    (block / "model.pt").unlink()
    result = rerun(city)
    ran = {stage.name for stage in result.stages if not stage.skipped}
    assert {"train", "merge", "mesh", "render", "eval"} <= ran and not {"synth", "partition"} & ran
    after = result.stages[2].summary["records"]
    assert after["b001"] != records["b001"]
    assert {b: after[b] for b in records if b != "b001"} == {b: records[b] for b in records if b != "b001"}
    assert result.fscore is not None and result.fscore > 0.25


def test_source_is_read_as_photos_a_scene_or_a_synthetic_city(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"")
    (tmp_path / "transforms.json").write_text("{}")
    assert Source.resolve(str(photos), None) == Source("sfm", str(photos))
    assert Source.resolve(str(tmp_path / "transforms.json"), None).kind == "ingest"
    assert Source.resolve(None, "tiny", {"width": "48"}) == Source("synth", "tiny", {"width": "48"})
    assert Source.resolve(None, None).kind == "workspace"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        Source.resolve(str(tmp_path / "empty"), None)
    with pytest.raises(ConfigError, match="not both"):
        Source.resolve(str(photos), "tiny")
    with pytest.raises(ConfigError, match="holds no scene"):
        run_pipeline(str(tmp_path / "ws"), load_config(CONFIG), Source("workspace"))
