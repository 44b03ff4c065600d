"""Execution engines: the same task functions as Ray tasks (local or a cluster) or in this process.

Partitioning (image batches) and merging (mesh chunks, image tiles) run their tasks through these.

Both keep at most `max_in_flight` tasks submitted at once, so the driver never holds more than that many
results (each a small summary: the data goes to the store); both retry a task that failed transiently
(`RETRYABLE`; with Ray also a dead worker) and re-raise a task's BigsceneError as itself. Ray is imported
only by `RayEngine`, so the inline engine works where Ray is not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from bigscene.errors import BigsceneError, ConfigError, WorkspaceError

log = logging.getLogger(__name__)

Job = TypeVar("Job")
Shared = TypeVar("Shared")
Result = TypeVar("Result")

#: Task errors worth another attempt: storage hiccups and lost workers, never bad input.
RETRYABLE: tuple[type[Exception], ...] = (OSError, RuntimeError)


@dataclass(frozen=True)
class _Raised:
    """A BigsceneError raised in a Ray task, returned as a value (error types need not pickle as exceptions)."""

    error_type: type[BigsceneError]
    args: tuple
    state: dict

    def rebuild(self) -> BigsceneError:
        error = self.error_type.__new__(self.error_type)
        Exception.__init__(error, *self.args)
        error.__dict__.update(self.state)
        return error


def _run_task(fn: Callable[[Any, Any], Any], job: Any, shared: Any) -> Any:
    try:
        return fn(job, shared)
    except BigsceneError as err:
        return _Raised(type(err), err.args, dict(err.__dict__))


class Engine(Protocol):
    peak_in_flight: int

    def map(
        self, fn: Callable[[Job, Shared], Result], jobs: Sequence[Job], shared: Shared
    ) -> Iterator[tuple[int, Result]]:
        """(job index, result) pairs in completion order."""
        ...

    def close(self) -> None: ...


class InlineEngine:
    """Each task in this process, one after another."""

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries
        self.peak_in_flight = 0

    def map(
        self, fn: Callable[[Job, Shared], Result], jobs: Sequence[Job], shared: Shared
    ) -> Iterator[tuple[int, Result]]:
        for index, job in enumerate(jobs):
            self.peak_in_flight = max(self.peak_in_flight, 1)
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
                    message = f"{fn.__name__} failed after {attempt} attempts: {err}; re-run to resume"
                    raise WorkspaceError(message) from err
                log.warning("%s failed (%s); retrying", fn.__name__, err)

    def close(self) -> None:
        """Nothing to release: tasks ran in this process."""


class RayEngine:
    """Each task a Ray task, on a local cluster it starts or on the cluster at `address`."""

    def __init__(
        self, address: str | None, num_cpus: int, max_retries: int, max_in_flight: int = 0, section: str = "engine"
    ) -> None:
        try:
            import ray
        except ImportError as err:
            raise ConfigError(
                f"{section}.engine=ray but Ray is not installed; `pip install ray` or set {section}.engine=inline"
            ) from err
        self._ray = ray
        self.max_retries = max_retries
        self._owns = not ray.is_initialized()
        if self._owns:
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=num_cpus or None, include_dashboard=False, logging_level=logging.WARNING)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_in_flight = max_in_flight or 2 * cpus
        self.peak_in_flight = 0

    def map(
        self, fn: Callable[[Job, Shared], Result], jobs: Sequence[Job], shared: Shared
    ) -> Iterator[tuple[int, Result]]:
        ray = self._ray
        remote = ray.remote(_run_task).options(
            name=fn.__name__, max_retries=self.max_retries, retry_exceptions=list(RETRYABLE)
        )
        shared_ref = ray.put(shared)
        pending: dict[Any, int] = {}
        queue = iter(enumerate(jobs))
        try:
            while True:
                while len(pending) < self.max_in_flight:
                    item = next(queue, None)
                    if item is None:
                        break
                    pending[remote.remote(fn, item[1], shared_ref)] = item[0]
                self.peak_in_flight = max(self.peak_in_flight, len(pending))
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(done[0])
                yield index, self._get(done[0], fn)
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


def make_engine(
    section: str, engine: str, address: str | None, num_cpus: int, max_retries: int, max_in_flight: int = 0
) -> Engine:
    """The engine `<section>.engine` names; `address` (a Ray cluster) needs the Ray engine."""
    if engine == "inline":
        if address:
            raise ConfigError(f"--address {address} joins a Ray cluster; it needs {section}.engine=ray")
        return InlineEngine(max_retries)
    return RayEngine(address, num_cpus, max_retries, max_in_flight, section)
