"""What running a task in the try leaves behind and hands the task.

Its own module because it is the try's side of a task, not its definition: the task
this process ran last (for the state callbacks the worker calls once the outcome is
known), calling callbacks as Airflow's task runner does, and the ``ti.xcom_pull`` /
``ti.xcom_push`` a task's context gets.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ketch.authoring.context import Context
    from ketch.authoring.tasks import BaseTask
    from ketch.authoring.xcom_args import XComPull


@dataclass
class ExecutedTask:
    """The task this process ran last, its context and the exception it ended with: what
    the try's state callbacks receive once the outcome is known."""

    task: BaseTask
    context: Context
    error: BaseException | None = None


_last_executed: ExecutedTask | None = None


def remember_executed(task: BaseTask, context: Context) -> ExecutedTask:
    """Record ``task`` as the last one this process runs (its error set if it raises)."""
    global _last_executed
    executed = _last_executed = ExecutedTask(task, context)
    return executed


def peek_last_executed() -> ExecutedTask | None:
    """The last :class:`ExecutedTask` of this process, left for the state callbacks."""
    return _last_executed


def take_last_executed() -> ExecutedTask | None:
    """The last :class:`ExecutedTask` of this process (forgotten once taken)."""
    global _last_executed
    executed, _last_executed = _last_executed, None
    return executed


def run_callbacks(callbacks: Sequence[Callable[..., Any]], kind: str, context: Context) -> None:
    """Call each callback with the context, as Airflow's task runner does: an exception
    is printed to the try's log and the next callback still runs."""
    import traceback

    for i, callback in enumerate(callbacks):
        try:
            callback(context)
        except Exception:
            name = getattr(callback, "__qualname__", repr(callback))
            print(f"Failed to run task callback {kind}[{i}] ({name}):", flush=True)
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()


def ti_xcom_pull(xcom_pull: XComPull) -> Callable[..., Any]:
    """Airflow's ``ti.xcom_pull(task_ids=..., key=...)`` on top of the try's xcom_pull."""

    def pull(task_ids: str | Sequence[str], key: str = "return_value") -> Any:
        if isinstance(task_ids, str):
            return xcom_pull(task_ids, key)
        return [xcom_pull(t, key) for t in task_ids]

    return pull


def ti_xcom_push(pushed: dict[str, Any]) -> Callable[..., None]:
    """Airflow's ``ti.xcom_push(key, value)``: kept and stored when the try succeeds."""

    def push(key: str, value: Any) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"xcom_push: the key must be a non-empty string, not {key!r}")
        pushed[key] = value

    return push
