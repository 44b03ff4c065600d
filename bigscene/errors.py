"""Errors a user can act on: each names the file (or key) and the problem."""

from __future__ import annotations


class BigsceneError(Exception):
    """Base of every error bigscene raises on purpose; the CLI prints these without a traceback."""


class InputError(BigsceneError):
    """Bad input data: a missing or corrupt file, an empty model, a non-finite pose."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(BigsceneError):
    """A bad configuration key or value."""


class WorkspaceError(BigsceneError):
    """A workspace that cannot be used as asked (newer schema, different scene, incomplete stage)."""
