"""`make bench`: run every CPU benchmark and print one table."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import torch

import benchmarks
from benchmarks.table import BenchRow, print_table

log = logging.getLogger("benchmarks")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows: list[BenchRow] = []
    for module in sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")):
        log.info("running %s", module)
        rows.extend(importlib.import_module(f"benchmarks.{module}").run())
    print_table(f"bigscene benchmarks (CPU, {torch.get_num_threads()} threads)", rows)


if __name__ == "__main__":
    main()
