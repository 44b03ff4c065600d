"""`bigscene run` and `bigscene demo`: every stage from the input to the evaluated mesh, each skipped when complete."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from bigscene.config import Config, load_config
from bigscene.errors import ConfigError, InputError
from bigscene.store.workspace import join, read_json, write_json_atomic

log = logging.getLogger(__name__)

RUN_NAME = "run.json"
DEMO_PRESET = "small"
DEMO_CONFIG = "demo"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
MERGE_STAGES = ("merge", "mesh", "render", "eval")


@dataclass
class Source:
    """Where the scene comes from: a synthetic preset, a folder of photos, a scene to ingest, or the workspace."""

    kind: str  # synth | sfm | ingest | workspace
    location: str = ""  # the preset name, the photo folder or the scene path
    synth_overrides: dict[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(cls, source: str | None, synth: str | None, synth_overrides: dict[str, str] | None = None) -> Source:
        """`--synth PRESET`, or `--source PATH` read as photos when it is a folder holding no known scene format."""
        from bigscene.scene.formats import detect_format

        if source and synth:
            raise ConfigError("give either --source or --synth, not both")
        if synth:
            return cls("synth", synth, dict(synth_overrides or {}))
        if not source:
            return cls("workspace")
        path = Path(source)
        try:
            detect_format(path)
        except InputError:
            if path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
                return cls("sfm", str(path))
            raise
        return cls("ingest", str(path))


@dataclass
class StageRun:
    """One stage of a run: how long it took and whether it found its outputs already complete."""

    name: str
    seconds: float
    skipped: bool
    summary: dict[str, Any] = field(repr=False)


@dataclass
class RunResult:
    """What `run_pipeline` did and wrote."""

    workspace: str
    source: Source
    stages: list[StageRun]
    psnr: float | None
    psnr_untrained: float | None
    fscore: float | None
    files: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": "run",
            "source": asdict(self.source),
            "stages": {s.name: {"seconds": round(s.seconds, 2), "skipped": s.skipped} for s in self.stages},
            "seconds": round(sum(s.seconds for s in self.stages), 2),
            "psnr": self.psnr,
            "psnr_untrained": self.psnr_untrained,
            "fscore": self.fscore,
            "files": self.files,
        }


def _summary_path(workspace: str, stage: str) -> str:
    return join(workspace, "merge", f"{stage}.json") if stage in MERGE_STAGES else join(workspace, f"{stage}.json")


def _comparable(summary: dict[str, Any] | None) -> Any:
    """The summary without its timing, JSON-normalised, to tell whether a stage changed anything."""
    if summary is None:
        return None
    return json.loads(json.dumps({k: v for k, v in summary.items() if k != "seconds"}, default=str))


def run_stage(workspace: str, name: str, call: Callable[[], dict[str, Any]]) -> StageRun:
    """Run one stage; it counts as skipped when its stored summary is unchanged (timings aside)."""
    before = _comparable(read_json(_summary_path(workspace, name)))
    log.info("stage %s", name)
    started = time.perf_counter()
    summary = call()
    seconds = time.perf_counter() - started
    return StageRun(name, seconds, before is not None and before == _comparable(summary), summary)


def _scene_stage(source: Source, workspace: str, config: Config, overwrite: bool) -> StageRun | None:
    if source.kind == "synth":
        from bigscene.synth import generate, make_config

        return run_stage(
            workspace,
            "synth",
            lambda: generate(make_config(source.location, source.synth_overrides), workspace, overwrite=overwrite),
        )
    if source.kind == "sfm":
        from bigscene.scene.ingest import run_sfm_stage

        return run_stage(workspace, "sfm", lambda: run_sfm_stage(source.location, workspace, config, overwrite))
    if source.kind == "ingest":
        from bigscene.scene.ingest import run_ingest

        return run_stage(workspace, "ingest", lambda: run_ingest(source.location, workspace, config, None, overwrite))
    from bigscene.store import has_scene

    if not has_scene(workspace):
        raise ConfigError(f"{workspace} holds no scene: give --source PATH (photos or a scene) or --synth PRESET")
    return None


def _untrained_psnr(train: dict[str, Any]) -> float | None:
    """Mean held-out PSNR of the blocks before their first step (the trainer's first validation)."""
    starts = [r["psnr_start"] for r in train.get("records", {}).values() if r.get("psnr_start") is not None]
    return round(sum(starts) / len(starts), 2) if starts else None


def _files(workspace: str, summaries: dict[str, dict[str, Any]]) -> dict[str, str]:
    files = {"partition map": join(workspace, "partition.png")}
    if "mesh" in summaries:
        files["mesh"] = str(summaries["mesh"].get("mesh", ""))
    if "render" in summaries:
        render = summaries["render"]
        files["renders"] = str(render.get("renders", ""))
        files["camera path"] = str(render.get("path", {}).get("file", ""))
    files["report"] = join(workspace, "merge", "report.json")
    files["run summary"] = join(workspace, RUN_NAME)
    return files


def run_pipeline(
    workspace: str, config: Config, source: Source, address: str | None = None, overwrite: bool = False
) -> RunResult:
    """Scene (synth, SfM or ingest) → partition → train → merge → mesh → render → eval; writes WS/run.json.

    Every stage is idempotent, so a finished stage is a no-op and an interrupted one redoes only what is missing.
    Meshing is left out for NeRF blocks (no SDF); eval scores geometry only where there is a ground-truth mesh.
    """
    from bigscene.merge import stage as merge
    from bigscene.train.stage import run_train
    from partitioning import run_partition

    workspace = str(workspace)
    stages: list[StageRun] = []
    scene = _scene_stage(source, workspace, config, overwrite)
    if scene is not None:
        stages.append(scene)
    stages.append(run_stage(workspace, "partition", lambda: run_partition(workspace, config, address, overwrite)))
    stages.append(run_stage(workspace, "train", lambda: run_train(workspace, config, None, address, overwrite)))
    merge_stages = [s for s in MERGE_STAGES if s != "mesh" or config.model.kind == "neus"]
    for name in merge_stages:
        stage_fn = getattr(merge, f"run_{name}")
        stages.append(run_stage(workspace, name, lambda fn=stage_fn: fn(workspace, config, address)))
    summaries = {s.name: s.summary for s in stages}
    evaluation = summaries["eval"]
    images = evaluation.get("images") or {}
    result = RunResult(
        workspace,
        source,
        stages,
        psnr=(images.get("composite") or {}).get("psnr"),
        psnr_untrained=_untrained_psnr(summaries["train"]),
        fscore=(evaluation.get("geometry") or {}).get("fscore"),
        files=_files(workspace, summaries),
    )
    write_json_atomic(join(workspace, RUN_NAME), result.to_json())
    return result


def run_demo(workspace: str, overrides: list[str] | None = None, address: str | None = None) -> RunResult:
    """The `small` synthetic city in 2×2 blocks at a CPU-sized budget (configs/demo.yaml)."""
    return run_pipeline(workspace, load_config(DEMO_CONFIG, overrides), Source("synth", DEMO_PRESET), address)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def stage_table(result: RunResult) -> Table:
    """One row per stage (time, whether it ran), then the figures and the files with how to open them."""
    table = Table(title=f"bigscene run: {result.workspace}", title_justify="left")
    for column in ("stage", "seconds", "status"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for stage in result.stages:
        table.add_row(stage.name, f"{stage.seconds:.1f}", "already complete" if stage.skipped else "ran")
    table.add_row("total", f"{sum(s.seconds for s in result.stages):.1f}", "", end_section=True)
    table.add_row("test-view PSNR", _fmt(result.psnr, 4), f"untrained {_fmt(result.psnr_untrained, 4)}")
    table.add_row(
        "F-score", _fmt(result.fscore), "against WS/gt/mesh.ply" if result.fscore is not None else "no ground truth"
    )
    return table


HOW_TO_OPEN = {
    "partition map": "any image viewer",
    "mesh": "any mesh viewer (MeshLab, Blender, `python -m trimesh`)",
    "renders": "PNG views, GIF path, orthophoto",
    "camera path": "any browser or image viewer",
    "report": "JSON; `bigscene eval -w WS` prints its table",
    "run summary": "JSON",
}


def summary(result: RunResult) -> dict[str, Any]:
    """The closing two-column summary: figures, then each file written with how to open it."""
    doc: dict[str, Any] = {
        "psnr": result.psnr,
        "psnr_untrained": result.psnr_untrained,
        "fscore": result.fscore,
        "seconds": round(sum(s.seconds for s in result.stages), 1),
    }
    for name, path in result.files.items():
        doc[name] = f"{path}  ({HOW_TO_OPEN.get(name, '')})"
    return doc
