"""Sensors: tasks that wait for something (Airflow's ``BaseSensorOperator``).

A sensor calls :meth:`BaseSensor.poke` every ``poke_interval`` seconds until it returns
something true (a :class:`PokeReturnValue` carries the value to return), then succeeds.
The semantics are Airflow 3's (``airflow.sdk.bases.sensor``): ``timeout`` (default 7
days) fails the try with :class:`SensorTimeout`, which uses no retry; ``soft_fail``
skips instead, also when ``poke`` raises ``AirflowFailException``; ``never_fail`` skips
on any error of ``poke``; ``silent_fail`` treats an error of ``poke`` as "not yet";
``exponential_backoff`` (with ``max_wait``) spaces the pokes out with Airflow's jittered
formula.

In ``mode="reschedule"`` a poke that finds nothing ends the try with
:class:`~ketch.exceptions.RescheduleTask` (``up_for_reschedule``: no slot, no pod held) and
the next poke is another try, due ``poke_interval`` later (Airflow's reschedule formula with
``exponential_backoff``); ``timeout`` counts from the first poke of the sequence, which the
execution API derives from the try history (``ti.first_reschedule_date``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ketch.authoring.python import PythonTask
from ketch.authoring.tasks import BaseTask, TaskResult
from ketch.authoring.xcom_args import XComPull
from ketch.exceptions import FailTask, RescheduleTask, SensorTimeout, SkipTask, TaskTimeout

if TYPE_CHECKING:
    from ketch.authoring.context import Context

DEFAULT_TIMEOUT = 7 * 24 * 3600.0  # Airflow's [sensors] default_timeout
MODES = ("poke", "reschedule")
# soft_fail turns these into a skip (Airflow's _SOFT_FAIL_EXCEPTIONS)
_SOFT_FAIL_EXCEPTIONS = (SensorTimeout, TaskTimeout, FailTask)


class PokeReturnValue:
    """What ``poke`` may return: whether it is done, and the sensor's return value."""

    def __init__(self, is_done: bool, xcom_value: Any | None = None) -> None:
        self.is_done = is_done
        self.xcom_value = xcom_value

    def __bool__(self) -> bool:
        return self.is_done


def _seconds(name: str, value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"Operator arg `{name}` must be timedelta object or a non-negative number")
    return float(value)


class BaseSensor(BaseTask):
    """Override :meth:`poke`; the try pokes until it is true, times out or fails."""

    kind = "sensor"

    def __init__(
        self,
        task_id: str,
        *,
        poke_interval: float | timedelta = 60,
        timeout: float | timedelta | None = None,
        soft_fail: bool = False,
        mode: str = "poke",
        exponential_backoff: bool = False,
        max_wait: float | timedelta | None = None,
        silent_fail: bool = False,
        never_fail: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_id, **kwargs)
        self.poke_interval = _seconds("poke_interval", poke_interval) or 0.0
        timeout_seconds = _seconds("timeout", timeout)
        self.timeout = DEFAULT_TIMEOUT if timeout_seconds is None else timeout_seconds
        self.max_wait = _seconds("max_wait", max_wait)
        if soft_fail and never_fail:
            raise ValueError(
                "soft_fail and never_fail are mutually exclusive, you can not provide both."
            )
        if mode not in MODES:
            raise ValueError(
                f"The mode must be one of {list(MODES)},'{self.task_id}'; received '{mode}'."
            )
        self.mode = mode
        self.soft_fail = soft_fail
        self.exponential_backoff = exponential_backoff
        self.silent_fail = silent_fail
        self.never_fail = never_fail

    def poke(self, context: Context) -> bool | PokeReturnValue:
        """Whether what the sensor waits for is there. Override when deriving."""
        raise NotImplementedError(f"sensor {self.task_id!r}: override poke()")

    def _poke(self, context: Context, xcom_pull: XComPull) -> Any:
        return self.poke(context)

    @property
    def reschedule(self) -> bool:
        """Whether each poke is its own try (Airflow's ``BaseSensorOperator.reschedule``)."""
        return self.mode == "reschedule"

    def _run(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        started_at: datetime | float
        if self.reschedule:
            # The first poke's start, across the tries of this reschedule sequence: the
            # duration is measured on the clock, not in this process (Airflow's rule).
            first = getattr(context["ti"], "first_reschedule_date", None)
            started_at = start_date = first or datetime.now(UTC)

            def run_duration() -> float:
                return (datetime.now(UTC) - start_date).total_seconds()

        else:
            started_at = start_monotonic = time.monotonic()

            def run_duration() -> float:
                return time.monotonic() - start_monotonic

        poke_count = 1
        while True:
            result = self._poke_once(context, xcom_pull)
            if result:
                value = result.xcom_value if isinstance(result, PokeReturnValue) else None
                print("Success criteria met. Exiting.", flush=True)
                return TaskResult(return_value=value)
            if run_duration() > self.timeout:
                message = (
                    f"Sensor has timed out; run duration of {run_duration()} seconds exceeds "
                    f"the specified timeout of {self.timeout}."
                )
                if self.soft_fail:
                    raise SkipTask(message)
                raise SensorTimeout(message)
            interval = self.next_poke_interval(started_at, run_duration, poke_count)
            if self.reschedule:
                raise RescheduleTask(datetime.now(UTC) + timedelta(seconds=interval))
            time.sleep(interval)
            poke_count += 1

    def _poke_once(self, context: Context, xcom_pull: XComPull) -> Any:
        try:
            return self._poke(context, xcom_pull)
        except _SOFT_FAIL_EXCEPTIONS as exc:
            if self.soft_fail:
                raise SkipTask("Skipping due to soft_fail is set to True.") from exc
            if self.never_fail:
                raise SkipTask("Skipping due to never_fail is set to True.") from exc
            raise
        except SkipTask:
            raise
        except Exception as exc:
            if self.silent_fail:
                import traceback

                print(f"Sensor poke failed: \n {traceback.format_exc()}", flush=True)
                return False
            if self.never_fail:
                raise SkipTask("Skipping due to never_fail is set to True.") from exc
            raise

    def next_poke_interval(
        self, started_at: datetime | float, run_duration: Callable[[], float], poke_count: int
    ) -> float:
        """Airflow's formula: ``poke_interval``, or with ``exponential_backoff`` a jittered
        ``poke_interval * 2**(n-2)`` (at least 1 s), capped by what is left of the
        timeout and by ``max_wait``. In reschedule mode ``n`` is estimated from the time
        since the first poke (each try pokes once)."""
        if not self.exponential_backoff:
            return self.poke_interval
        dag_id = self.dag.dag_id if self.dag is not None else ""
        if self.reschedule:
            poke_count = (
                estimated_poke_count(
                    self.poke_interval, dag_id, self.task_id, started_at, run_duration()
                )
                or poke_count
            )
        delay = _jittered_backoff(self.poke_interval, dag_id, self.task_id, started_at, poke_count)
        interval = min(self.timeout - int(run_duration()), delay)
        if self.max_wait is not None:
            interval = min(self.max_wait, interval)
        return max(interval, 0.0)


def _jittered_backoff(
    poke_interval: float, dag_id: str, task_id: str, started_at: datetime | float, poke_count: int
) -> float:
    """``poke_interval * 2**(n-2)`` (at least 1 s) plus a deterministic jitter of up to as
    much again: a hash of the sensor and its start, so two sensors do not poke in step."""
    min_backoff = max(int(poke_interval * (2 ** (poke_count - 2))), 1)
    seed = f"{dag_id}#{task_id}#{started_at}#{poke_count}".encode()
    run_hash = int(hashlib.sha1(seed, usedforsecurity=False).hexdigest(), 16)
    return float(min(min_backoff + run_hash % min_backoff, timedelta.max.total_seconds() - 1))


def estimated_poke_count(
    poke_interval: float, dag_id: str, task_id: str, started_at: datetime | float, elapsed: float
) -> int:
    """Which poke this is in reschedule mode, where no process counts them: the first
    ``n`` whose backoff intervals since the first poke add up to more than ``elapsed``
    (Airflow's estimate in ``_get_next_poke_interval``)."""
    cumulative = 0.0
    count = 0
    while cumulative <= elapsed:
        count += 1
        cumulative += _jittered_backoff(poke_interval, dag_id, task_id, started_at, count)
    return count


class PythonSensor(BaseSensor, PythonTask):
    """Pokes by calling ``python_callable(*op_args, **op_kwargs)`` (context injected and
    fields templated as for ``@task``, rendered once per try); a true result (or a
    :class:`PokeReturnValue`) ends the wait."""

    kind = "sensor"

    def _run(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        self._prepared = self.prepare_call(context, xcom_pull)
        return super()._run(context, xcom_pull)

    def _poke(self, context: Context, xcom_pull: XComPull) -> Any:
        args, kwargs = self._prepared
        return self.python_callable(*args, **kwargs)


class FileSensor(BaseSensor):
    """Waits for a file to exist: ``filepath`` is a glob (``**`` with ``recursive``), and
    a folder counts once it holds a file (Airflow's ``FileSensor``; without a
    filesystem connection, the path is local to the try)."""

    def __init__(self, task_id: str, filepath: str, *, recursive: bool = False, **kwargs: Any):
        kwargs.pop("fs_conn_id", None)  # Airflow's filesystem connection: the path is local
        super().__init__(task_id, **kwargs)
        self.filepath = filepath
        self.recursive = recursive

    def poke(self, context: Context) -> bool:
        for path in glob.glob(self.filepath, recursive=self.recursive):
            if os.path.isfile(path):
                return True
            for _, _, files in os.walk(path):
                if files:
                    return True
        return False
