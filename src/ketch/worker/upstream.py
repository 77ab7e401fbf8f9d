"""Values of upstream tasks, as a try reads them through the execution API.

Values arrive as the upstream try stored them, tagged JSON (:mod:`ketch.worker.serde`),
and are decoded here, so a ``datetime``, ``Decimal`` or tuple returned upstream is one
downstream too, as with Airflow's serde.

A task that takes another's return value (an ``XComArg``: ``b(a())`` with ``@task``)
and runs under ``all_success`` has every upstream succeeded. A try that returned
``None`` stored it (JSON null), so its downstream gets ``None``. If an upstream has no
value at all — marked success by hand without running — passing ``None`` on would fail
later, far from the cause. The try fails at once instead, naming both tasks, and is not
retried (no retry would bring the value). Under any other trigger rule an upstream may
have been skipped or failed, and a missing value is ``None`` as in Airflow; so is
``ti.xcom_pull`` of a value the task does not take as an argument.

In a mapped task group, the value of another task of the same group is that task's value
for the running instance's map_index (Airflow's "relevant upstream map indexes").

Kept light: the try imports it (no database, no web stack).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ketch.exceptions import FailTask
from ketch.worker.serde import decode

if TYPE_CHECKING:
    from ketch.worker.client import ExecutionApiClient

RETURN_VALUE = "return_value"


class UpstreamValueMissing(FailTask):
    """The task takes an upstream task's return value, and that task has none."""


def xcom_puller(client: ExecutionApiClient) -> Callable[..., Any]:
    """``xcom_pull(task_id, key)`` for the running task: the value, ``None`` when there is
    none, or :class:`UpstreamValueMissing` when the task needs that value (see above)."""

    def xcom_pull(task_id: str, key: str = RETURN_VALUE) -> Any:
        try:
            index = _same_group_index(task_id)
            value = (
                client.xcom(task_id, key)
                if index is None
                else client.xcom(task_id, key, map_index=index)
            )
        except KeyError:
            needing = _task_needing(task_id, key)
            if needing is None:
                return None
            raise UpstreamValueMissing(
                f"task {needing!r} needs the return value of {task_id!r}, but {task_id!r} "
                "has none (it was marked success without running)"
            ) from None
        return decode(value)

    return xcom_pull


def _same_group_index(task_id: str) -> int | None:
    """The running instance's map_index when ``task_id`` is a task of the same mapped task
    group (its value for this instance is that index's), else None (the whole value)."""
    from ketch.authoring.context import get_current_context
    from ketch.authoring.mapped_group import same_group_map_index

    try:
        context = get_current_context()
        task = context["task"]
    except (RuntimeError, KeyError):
        return None
    return same_group_map_index(task, task_id, int(context.get("map_index", -1)))


def _task_needing(task_id: str, key: str) -> str | None:
    """The running task's id when it runs under all_success and one of its arguments is
    ``task_id``'s value under ``key``; else None."""
    from ketch.authoring.context import get_current_context
    from ketch.authoring.xcom_args import find_xcom_args
    from ketch.states import TriggerRule

    if key != RETURN_VALUE:
        return None
    try:
        task = get_current_context()["task"]
    except (RuntimeError, KeyError):
        return None
    if getattr(task, "trigger_rule", TriggerRule.ALL_SUCCESS) != TriggerRule.ALL_SUCCESS:
        return None
    arguments = [getattr(task, name, None) for name in ("op_args", "op_kwargs")]
    if any(x.operator.task_id == task_id and x.key == key for x in find_xcom_args(arguments)):
        return str(task.task_id)
    return None
