"""Stage summaries: merge/<stage>.json, merge/report.json gathering them, and the printed evaluation table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from bigscene.store.merge_store import merge_path
from bigscene.store.workspace import read_json, write_json_atomic

REPORT_NAME = "report.json"


def record_stage(workspace: str, stage: str, summary: dict[str, Any]) -> None:
    """Write merge/<stage>.json and put the summary under `stage` in merge/report.json."""
    write_json_atomic(merge_path(workspace, f"{stage}.json"), summary)
    report = read_json(merge_path(workspace, REPORT_NAME)) or {}
    report[stage] = summary
    write_json_atomic(merge_path(workspace, REPORT_NAME), report)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def report_table(report: dict[str, Any]) -> Table:
    """The figures a person compares, one row each: images, geometry, seams, mesh."""
    table = Table(title="bigscene merge report", title_justify="left")
    for column in ("section", "figure", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    evaluation = report.get("eval", {})
    images = evaluation.get("images") or {}
    if images:
        table.add_row(
            "images",
            "composite PSNR / SSIM",
            f"{_fmt(images['composite'].get('psnr'))} / {_fmt(images['composite'].get('ssim'))}",
        )
        for block_id, row in images.get("blocks_alone", {}).items():
            table.add_row(
                "images",
                f"{block_id} alone PSNR (composite on its pixels)",
                f"{_fmt(row['psnr'])} ({_fmt(row['composite_psnr'])})",
            )
    geometry = evaluation.get("geometry") or {}
    if geometry:
        table.add_row("geometry", f"F-score at {_fmt(geometry['threshold'])}", _fmt(geometry["fscore"]))
        for key in ("precision", "recall", "chamfer", "accuracy", "completeness"):
            table.add_row("geometry", key, _fmt(geometry[key]))
        for band, value in geometry.get("accuracy_by_band", {}).items():
            table.add_row("geometry", f"accuracy in {band}", _fmt(value))
    seams = evaluation.get("seams") or report.get("merge", {}).get("seams") or {}
    if seams:
        table.add_row("seams", "mean |SDF_a - SDF_b| near the surface", _fmt(seams["disagreement"]["mean"]))
        table.add_row("seams", "composite jump where blocks start or stop", _fmt(seams["jump"]["mean"]))
    mesh = report.get("mesh", {})
    if mesh:
        for key in ("vertices", "faces", "boundary_edges", "boundary_edges_inside_roi", "nonmanifold_edges"):
            table.add_row("mesh", key.replace("_", " "), _fmt(mesh.get(key)))
    return table


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(report_table(report))
