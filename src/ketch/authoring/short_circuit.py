"""``@task.short_circuit`` and :class:`ShortCircuitTask` (Airflow's ``ShortCircuitOperator``).

The callable's result decides whether the pipeline continues, as in Airflow 3.3's
``ShortCircuitOperator.execute``:

- truthy: the downstream tasks run as usual; the value is the task's return value (XCom);
- falsy, and the task has downstream tasks: the try succeeds, stores no return value
  (Airflow raises ``DownstreamTasksSkipped`` before the value is pushed), and skips
  - every task downstream of it, whatever their trigger rules
    (``ignore_downstream_trigger_rules=True``, the default), or
  - only its direct downstream tasks (``False``): tasks further down are then decided by
    their own trigger rules (an ``all_done`` join still runs);
- falsy without downstream tasks: nothing to skip, the value is stored.

The decision travels as a branch's does: the try reports the tasks it follows (all its
direct downstream tasks when truthy, none when falsy), stored as the ``__branch__`` XCom,
and the scheduler reads the task's ``ignore_downstream_trigger_rules`` from the serialized
DAG to know how far a "follow none" reaches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ketch.authoring.python import PythonTask
from ketch.authoring.tasks import TaskResult
from ketch.authoring.xcom_args import XComPull

if TYPE_CHECKING:
    from ketch.authoring.context import Context


class ShortCircuitTask(PythonTask):
    """A python callable whose falsy result skips the tasks downstream of it."""

    kind = "short_circuit"

    def __init__(
        self,
        task_id: str,
        python_callable: Callable[..., Any],
        *,
        ignore_downstream_trigger_rules: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_id, python_callable, **kwargs)
        # Airflow tests ``is True``: only True skips every descendant.
        self.ignore_downstream_trigger_rules = ignore_downstream_trigger_rules is True

    def _run(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        condition = self.call(context, xcom_pull)
        print(f"Condition result is {condition!r}", flush=True)
        if condition:
            print("Proceeding with downstream tasks...", flush=True)
            return TaskResult(return_value=condition, follow_task_ids=self._direct_downstream())
        if not self.downstream_task_ids:
            print("No downstream tasks; nothing to do.", flush=True)
            return TaskResult(return_value=condition, follow_task_ids=[])
        how = (
            "all downstream tasks"
            if self.ignore_downstream_trigger_rules
            else "direct downstream tasks"
        )
        print(f"Skipping {how}", flush=True)
        return TaskResult(follow_task_ids=[], push_return_value=False)

    def _direct_downstream(self) -> list[str]:
        return sorted(self.downstream_task_ids)


ShortCircuitOperator = ShortCircuitTask
