"""One result table for every benchmark: figure, in-run baseline, ratio."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


@dataclass
class BenchRow:
    """A measured figure and the baseline it is compared with in the same run."""

    name: str
    figure: float
    baseline_name: str
    baseline: float
    unit: str
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        return self.figure / self.baseline if self.baseline else float("nan")


def print_table(title: str, rows: list[BenchRow], console: Console | None = None) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("benchmark", "figure", "baseline", "baseline figure", "ratio", "unit"):
        table.add_column(column, justify="right" if "figure" in column or column == "ratio" else "left")
    for row in rows:
        better = "higher" if row.higher_is_better else "lower"
        table.add_row(
            row.name,
            f"{row.figure:,.1f}",
            row.baseline_name,
            f"{row.baseline:,.1f}",
            f"{row.ratio:.2f}x",
            f"{row.unit} ({better} is better)",
        )
    (console or Console(width=140)).print(table)
