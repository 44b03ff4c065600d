"""Workspace paths and atomic writes: local directories or any fsspec URL that zarr accepts."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import fsspec


def is_remote(workspace: str | os.PathLike) -> bool:
    return "://" in str(workspace) and not str(workspace).startswith("file://")


def join(workspace: str | os.PathLike, *parts: str) -> str:
    """Path or URL of `parts` inside the workspace."""
    base = str(workspace).rstrip("/")
    return "/".join([base, *parts])


def exists(path: str) -> bool:
    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


def read_json(path: str) -> dict[str, Any] | None:
    """The JSON document at `path`, or None when there is none."""
    fs, p = fsspec.core.url_to_fs(path)
    if not fs.exists(p):
        return None
    with fs.open(p, "r") as f:
        return json.load(f)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write a whole file so that readers see the old one or the new one, never half of it."""
    if is_remote(path):
        with fsspec.open(path, "wb") as f:
            f.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str, document: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(document, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
