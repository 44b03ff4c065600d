"""Execution engines: run a task function over jobs with Ray (local or a cluster) or in this process.

Both retry a task that fails transiently (`RETRYABLE` errors; with Ray also a dead worker) up to
`max_retries` times, re-raise a task's `BigsceneError` as itself (never retried: bad input stays bad),
and yield results as they complete.
Ray is imported only by `RayEngine`, so the inline engine works where Ray is not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from bigscene.config import PartitionConfig
from bigscene.errors import BigsceneError, ConfigError, WorkspaceError

log = logging.getLogger(__name__)

Job = TypeVar("Job")
Shared = TypeVar("Shared")
Result = TypeVar("Result")

#: Task errors worth another attempt: storage hiccups and injected faults, never bad input.
RETRYABLE: tuple[type[Exception], ...] = (OSError, RuntimeError)


@dataclass(frozen=True)
class _Raised:
    """A BigsceneError a Ray task raised, returned as a value: error types need not pickle as exceptions."""

    error_type: type[BigsceneError]
    args: tuple
    state: dict

    def rebuild(self) -> BigsceneError:
        error = self.error_type.__new__(self.error_type)
        Exception.__init__(error, *self.args)
        error.__dict__.update(self.state)
        return error


def _run_task(fn: Callable[[Job, Shared], Result], job: Job, shared: Shared) -> Result | _Raised:
    """What a Ray worker runs: the task, with its BigsceneError carried back rather than raised."""
    try:
        return fn(job, shared)
    except BigsceneError as err:
        return _Raised(type(err), err.args, dict(err.__dict__))


class Engine(Protocol):
    def map(
        self, fn: Callable[[Job, Shared], Result], jobs: Sequence[Job], shared: Shared
    ) -> Iterator[tuple[int, Result]]:
        """(job index, result) pairs in completion order."""
        ...

    def close(self) -> None: ...


class InlineEngine:
    """Runs each task in this process, one after another."""

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries

    def map(
        self, fn: Callable[[Job, Shared], Result], jobs: Sequence[Job], shared: Shared
    ) -> Iterator[tuple[int, Result]]:
        for index, job in enumerate(jobs):
            yield index, self._call(fn, job, shared)

    def _call(self, fn: Callable[[Job, Shared], Result], job: Job, shared: Shared) -> Result:
        attempt = 0
        while True:
            try:
                return fn(job, shared)
            except BigsceneError:
                raise
            except RETRYABLE as err:
                attempt += 1
                if attempt > self.max_retries:
                    raise WorkspaceError(
                        f"{fn.__name__} failed after {attempt} attempts: {err}; re-run to resume"
                    ) from err
                log.warning("%s failed (%s); retrying", fn.__name__, err)

    def close(self) -> None:
        pass


class RayEngine:
    """Runs each task as a Ray task: on a local cluster it starts, or on the cluster at `address`."""

    def __init__(self, address: str | None, num_cpus: int, max_retries: int) -> None:
        try:
            import ray
        except ImportError as err:
            raise ConfigError(
                "partition.engine=ray but Ray is not installed; `pip install ray` or set partition.engine=inline"
            ) from err
        self._ray = ray
        self.max_retries = max_retries
        self._owns = not ray.is_initialized()
        if self._owns:
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=num_cpus or None, include_dashboard=False, logging_level=logging.WARNING)

    def map(
        self, fn: Callable[[Job, Shared], Result], jobs: Sequence[Job], shared: Shared
    ) -> Iterator[tuple[int, Result]]:
        ray = self._ray
        remote = ray.remote(_run_task).options(
            name=fn.__name__, max_retries=self.max_retries, retry_exceptions=list(RETRYABLE)
        )
        shared_ref = ray.put(shared)
        index_of = {remote.remote(fn, job, shared_ref): i for i, job in enumerate(jobs)}
        pending = list(index_of)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield index_of[done[0]], self._get(done[0], fn)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def _get(self, ref: Any, fn: Callable) -> Any:
        ray = self._ray
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            raise WorkspaceError(
                f"{fn.__name__} failed after {self.max_retries + 1} attempts: {err.cause}; re-run to resume"
            ) from err
        except ray.exceptions.RayError as err:
            raise WorkspaceError(
                f"{fn.__name__} failed after {self.max_retries + 1} attempts ({type(err).__name__}); re-run to resume"
            ) from err
        if isinstance(result, _Raised):
            raise result.rebuild()
        return result

    def close(self) -> None:
        if self._owns:
            self._ray.shutdown()


def make_engine(config: PartitionConfig, address: str | None) -> Engine:
    """The engine `partition.engine` names; `address` (a Ray cluster) needs the Ray engine."""
    if config.engine == "inline":
        if address:
            raise ConfigError(f"--address {address} joins a Ray cluster; it needs partition.engine=ray")
        return InlineEngine(config.max_retries)
    return RayEngine(address, config.num_cpus, config.max_retries)
