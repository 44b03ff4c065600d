"""Workspaces the training benchmarks share: a generated synthetic city, partitioned, in a temporary directory."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from bigscene.config import load_config
from bigscene.synth import generate, make_config
from partitioning import run_partition

log = logging.getLogger(__name__)


@contextmanager
def partitioned_city(preset: str, synth: dict[str, Any], partition: list[str], prefix: str) -> Iterator[str]:
    """A temporary workspace holding the `preset` city (with `synth` overrides) partitioned with `partition`
    overrides; torch runs on one thread meanwhile, as a benchmark on one core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as ws:
            started = time.perf_counter()
            generate(make_config(preset, synth), ws)
            run_partition(ws, load_config(None, partition))
            log.info("%s city generated and partitioned in %.1f s", preset, time.perf_counter() - started)
            yield ws
    finally:
        torch.set_num_threads(threads)
