"""The `bigscene` command: one subcommand per pipeline stage, each on a workspace `-w WS`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from bigscene import __version__
from bigscene.config import Config, load_config
from bigscene.errors import BigsceneError

if TYPE_CHECKING:
    from bigscene.pipeline import RunResult

log = logging.getLogger("bigscene")
console = Console(stderr=False)

_HIDDEN_KEYS = {"fingerprint", "stage", "records", "config"}


def print_summary(title: str, summary: dict[str, Any]) -> None:
    """The stage summary as a two-column table."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if key in _HIDDEN_KEYS:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list) and len(value) > 8:
            value = f"{value[:8]} … ({len(value)} in all)"
        table.add_row(key, escape(str(value)))
    console.print(table)


OVERRIDES_HELP = "Any config key can follow as section.key=value, e.g. scene.up=points train.steps=500."


def _add_common(parser: argparse.ArgumentParser, overwrite: bool = True, config_option: bool = True) -> None:
    parser.epilog = OVERRIDES_HELP
    parser.add_argument("-w", "--workspace", required=True, metavar="WS", help="workspace directory or URL")
    if config_option:
        parser.add_argument("-c", "--config", default=None, help="YAML config (a path, or a name in configs/)")
    else:
        parser.set_defaults(config=None)
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help="replace different earlier outputs")


def _ingest(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from bigscene.scene.ingest import run_ingest

    fmt = None if args.format == "auto" else args.format
    return run_ingest(args.source, args.workspace, config, fmt=fmt, overwrite=args.overwrite)


def _sfm(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from bigscene.scene.ingest import run_sfm_stage

    return run_sfm_stage(args.images_dir, args.workspace, config, overwrite=args.overwrite)


def _synth(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from bigscene.synth import generate, make_config

    overrides = dict(item.split("=", 1) for item in args.synth_overrides)
    return generate(make_config(args.preset, overrides), args.workspace, overwrite=args.overwrite)


def _partition(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from partitioning import run_partition

    return run_partition(args.workspace, config, address=args.address, overwrite=args.overwrite)


def _train(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from bigscene.train.stage import run_train

    blocks = [b for b in args.blocks.split(",") if b] if args.blocks else None
    return run_train(args.workspace, config, blocks=blocks, address=args.address, overwrite=args.overwrite)


def _merge_stage(name: str) -> Callable[[argparse.Namespace, Config], dict[str, Any]]:
    def handler(args: argparse.Namespace, config: Config) -> dict[str, Any]:
        from bigscene.merge import stage

        return getattr(stage, f"run_{name}")(args.workspace, config, address=args.address)

    return handler


def _print_run(result: RunResult) -> dict[str, Any]:
    """The merge report and the run's stage table; returns the closing summary."""
    from bigscene.merge.report import print_report
    from bigscene.pipeline import stage_table, summary
    from bigscene.store.workspace import join, read_json

    print_report(read_json(join(result.workspace, "merge", "report.json")) or {}, console)
    console.print(stage_table(result))
    return summary(result)


def _run(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from bigscene.pipeline import Source, run_pipeline

    config = load_config(args.config_file, args.overrides)
    source = Source.resolve(args.source, args.synth, dict(item.split("=", 1) for item in args.synth_overrides))
    return _print_run(run_pipeline(args.workspace, config, source, address=args.address, overwrite=args.overwrite))


def _demo(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    from bigscene.pipeline import run_demo

    return _print_run(run_demo(args.workspace, args.overrides, address=args.address))


MERGE_STAGES = {
    "merge": "compose the trained blocks into one field and measure its seams",
    "mesh": "mesh the composite SDF out of core (chunked, welded) into WS/merge/mesh/mesh.ply",
    "render": "render test views, a camera-path GIF, the orthophoto and the height map of the whole scene",
    "eval": "PSNR/SSIM on test views, Chamfer and F-score against ground truth, seam metrics",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bigscene", description="City-scale 3D reconstruction from photographs, block by block."
    )
    parser.add_argument("--version", action="version", version=f"bigscene {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    ingest = stages.add_parser(
        "ingest",
        help="read a COLMAP model, transforms.json, Blender or NeuS scene into the workspace",
        description="Read an input scene, check its images, normalise it (z up, ROI) and write WS/scene.zarr.",
    )
    ingest.add_argument("source", help="COLMAP model/project folder, transforms.json, Blender or NeuS folder")
    ingest.add_argument(
        "--format",
        default="auto",
        choices=("auto", "colmap", "transforms", "blender", "neus"),
        help="input format",
    )
    _add_common(ingest)
    ingest.set_defaults(handler=_ingest)

    sfm = stages.add_parser(
        "sfm",
        help="structure from motion on a folder of photos (pycolmap), then ingest the model",
        description="Extract and match SIFT features, map incrementally or globally, keep the largest model, "
        "normalise it and write WS/scene.zarr.",
    )
    sfm.add_argument("images_dir", help="folder of photos")
    _add_common(sfm)
    sfm.set_defaults(handler=_sfm)

    synth = stages.add_parser(
        "synth",
        help="generate a synthetic city with ground truth (images, scene, COLMAP, transforms.json, mesh)",
        description="Render a seeded procedural city: posed images, sparse points, test-view depth and normals, "
        "a ground-truth mesh and SDF. Preset fields are overridden as synth.FIELD=value.",
    )
    synth.add_argument("--preset", default="tiny", help="tiny | small | city | scale | sfm (default: tiny)")
    _add_common(synth)
    synth.set_defaults(handler=_synth)

    partition = stages.add_parser(
        "partition",
        help="split the scene into spatial blocks and write each block's rays and surface voxels (Ray)",
        description="Lay out blocks over the ROI, seed surface voxels from SfM points, assign every training "
        "pixel's ray to the blocks that can see it and write WS/blocks/<id>/{block.json,rays.zarr,voxels.zarr}.",
    )
    partition.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto or host:6379)")
    _add_common(partition)
    partition.set_defaults(handler=_partition)

    train = stages.add_parser(
        "train",
        help="train one NeuS/NeRF model per block (Ray places blocks on GPUs; resumes from checkpoints)",
        description="Train every block (or --blocks) with PyTorch Lightning, tracked in W&B (offline by default); "
        "write WS/blocks/<id>/ckpt/, the exported model and WS/train.json.",
    )
    train.add_argument("--blocks", default=None, help="comma-separated block ids (default: all)")
    train.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto or host:6379)")
    _add_common(train)
    train.set_defaults(handler=_train)

    for name, summary in MERGE_STAGES.items():
        sub = stages.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        sub.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto or host:6379)")
        _add_common(sub, overwrite=False)
        sub.set_defaults(handler=_merge_stage(name))

    run = stages.add_parser(
        "run",
        help="the whole pipeline: scene (synth, SfM or ingest), partition, train, merge, mesh, render, eval",
        description="Run every stage on the workspace, skipping those already complete, and write WS/run.json. "
        "--source reads a folder of photos (SfM) or a scene (COLMAP, transforms.json, Blender, NeuS); --synth "
        "generates a synthetic city with ground truth; neither uses the scene already in the workspace.",
    )
    run.add_argument("config_file", metavar="CONFIG", help="YAML config (a path, or a name in configs/)")
    run.add_argument("--source", default=None, help="folder of photos, or a scene to ingest")
    run.add_argument("--synth", default=None, metavar="PRESET", help="tiny | small | city | scale | sfm")
    run.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto or host:6379)")
    _add_common(run, config_option=False)
    run.set_defaults(handler=_run, summary_file="run.json")

    demo = stages.add_parser(
        "demo",
        help="the small synthetic city in 2x2 blocks at a CPU-sized budget, end to end (minutes on a laptop)",
        description="`bigscene run configs/demo.yaml --synth small`: writes the merged mesh, renders, the "
        "partition map and the report, and prints where they are.",
    )
    demo.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto or host:6379)")
    _add_common(demo, overwrite=False, config_option=False)
    demo.set_defaults(handler=_demo, summary_file="run.json")
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options anywhere on the line; every bare `section.key=value` is a config override."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    assignments = [item for item in extra if "=" in item and not item.startswith("-")]
    args.synth_overrides = [item for item in assignments if item.startswith("synth.")]
    args.overrides = [item for item in assignments if not item.startswith("synth.")]
    unknown = [item for item in extra if item not in assignments]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    handler: Callable[[argparse.Namespace, Config], dict[str, Any]] = args.handler
    try:
        config = load_config(args.config, args.overrides)
        summary = handler(args, config)
    except BigsceneError as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        return 2
    summary_file = getattr(args, "summary_file", f"{args.stage}.json")
    print_summary(f"bigscene {args.stage}: {args.workspace}/{summary_file}", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
