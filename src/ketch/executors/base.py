"""The execution boundary: what the scheduler asks of an executor, and what it hears back.

An executor starts task tries somewhere (a subprocess, a pod) and tells the
scheduler, as soon as it knows, that a try has ended. It does not decide task
state: the try itself reports success or failure to the execution API, and the
scheduler turns "ended without reporting" into a failure. Executors only carry
what they observe (exit code, a reason such as "OOMKilled" or "timed out").

Implementations: ``ketch.executors.local.LocalExecutor`` (one forked subprocess
per try) and, later, ``ketch.executors.kubernetes.KubernetesExecutor`` (one pod
per try). Both satisfy :class:`Executor`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class TryKey:
    """Names one try of one task instance everywhere (labels, log paths, tokens)."""

    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    # The mapped instance (-1: not mapped); part of pod names, labels and log paths.
    map_index: int = -1


def map_index_args(key: TryKey) -> list[str]:
    """``--map-index N`` for ``ketch task run`` of a mapped instance; nothing otherwise."""
    return ["--map-index", str(key.map_index)] if key.map_index >= 0 else []


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """Everything an executor needs to start a try; built by the scheduler."""

    key: TryKey
    ti_id: int
    token: str  # bearer token for the execution API, valid for this try only
    relative_fileloc: str  # DAG file, relative to the DAGs folder (pods resolve it themselves)
    fileloc: str  # absolute path on the scheduler's machine (the local executor uses it)
    execution_timeout: float | None = None  # seconds; the executor kills the try after it (+ grace)
    executor_config: dict[str, Any] = field(default_factory=dict)
    priority_weight: int = 1


@dataclass(frozen=True, slots=True)
class TryEnded:
    """An executor saw a try end. ``reason`` explains an abnormal end in one line."""

    key: TryKey
    ti_id: int
    exit_code: (
        int | None
    )  # None when the executor could not learn it (adopted process, vanished pod)
    reason: str | None = None  # e.g. "execution_timeout (10s) exceeded", "OOMKilled (limit 128Mi)"
    # True when the try never got to run user code (image pull, admission, unschedulable):
    # the scheduler then does not count it against the task's retries (up to a limit).
    failed_before_start: bool = False
    # Which process or pod ended, as the try records itself at start (``hostname``, and
    # ``pid`` where the executor knows it: the local executor). The scheduler ignores an
    # end whose process is not the one that started the try: a duplicate launched after
    # a crash exits at once (its start is refused) and must not fail the real try.
    hostname: str | None = None
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class RunningTry:
    """A try the database believes is queued or running, offered for adoption after a restart."""

    key: TryKey
    ti_id: int
    external_executor_id: str | None  # what launch() returned for it, if recorded
    execution_timeout: float | None = None
    started_at_epoch: float | None = None  # for timeouts of adopted tries
    # What the try recorded at start (``try/start``), if it started: lets an executor find
    # a try whose launch was never recorded (the scheduler died between launch and commit).
    hostname: str | None = None
    pid: int | None = None


EventSink = Callable[[TryEnded], None]
"""Called from any thread when a try ends; must be cheap and thread-safe (the
scheduler's sink puts the event on its queue and wakes the loop)."""


@runtime_checkable
class Executor(Protocol):
    name: str

    def start(self, on_try_ended: EventSink) -> None:
        """Start background machinery (fork server, watch); events go to ``on_try_ended``."""
        ...

    def launch(self, request: LaunchRequest) -> str:
        """Start the try and return its external id (stored on the task instance).

        Must not block for long; may raise ``LaunchError`` (the scheduler then fails
        or retries the try with the message).
        """
        ...

    def launch_many(self, requests: Sequence[LaunchRequest]) -> list[str | LaunchError]:
        """Start several tries, concurrently where the executor can (forks in flight at
        once, pod creates in parallel); one result per request, in order: the external
        id, or the LaunchError of that request."""
        ...

    def adopt(self, tries: Iterable[RunningTry]) -> list[TryKey]:
        """Take over tries started by a previous scheduler; return the keys adopted.

        A try that cannot be found is reported through the event sink as ended
        (exit_code None, reason saying it vanished), never silently dropped.
        """
        ...

    def cancel(self, key: TryKey) -> None:
        """Stop a try (its process group or pod). Its end is still reported as an event."""
        ...

    def running(self) -> set[TryKey]:
        """Tries this executor is currently watching."""
        ...

    def stop(self) -> None:
        """Stop background machinery; leave running tries running (they are adopted on restart)."""
        ...


class LaunchError(RuntimeError):
    """A try could not be started; the message is shown as the try's error."""
