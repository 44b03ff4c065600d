"""`python -m bigscene.train -w WS [--blocks IDS] [--address ADDR] [overrides]`: the train stage as a module.

The entry point Lightning DDP re-launches on every rank (and srun runs on every task under SLURM); it takes
the same arguments as `bigscene train`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from bigscene.cli import print_summary
from bigscene.config import load_config
from bigscene.errors import BigsceneError
from bigscene.train.stage import SUMMARY_NAME, run_train


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bigscene.train", description=__doc__)
    parser.add_argument("-w", "--workspace", required=True, metavar="WS")
    parser.add_argument("-c", "--config", default=None, help="YAML config (a path, or a name in configs/)")
    parser.add_argument("--blocks", default=None, help="comma-separated block ids (default: all)")
    parser.add_argument("--address", default=None, help="join the Ray cluster at this address")
    parser.add_argument("--overwrite", action="store_true", help="restart blocks trained with another config")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_config(args.config, args.overrides)
        blocks = args.blocks.split(",") if args.blocks else None
        summary = run_train(args.workspace, config, blocks, args.address, overwrite=args.overwrite)
    except BigsceneError as err:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        return 2
    print_summary(
        f"bigscene train: {args.workspace}/{SUMMARY_NAME}", {k: v for k, v in summary.items() if k != "records"}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
