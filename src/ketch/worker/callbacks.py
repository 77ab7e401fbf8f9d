"""Task state callbacks, run in the try once its outcome is known (Airflow 3's task runner).

``on_success_callback``, ``on_skipped_callback``, ``on_retry_callback`` (the try failed
and will be retried: it may retry and ``try_number <= max_tries``, the rule the execution
API applies) or ``on_failure_callback``, each called with the task's context (plus
``exception`` for a failure), before the outcome is reported: the try's state is recorded
once its callbacks have run, as Airflow's supervisor records it when the task process ends.
A callback that raises is logged and ignored. ``on_execute_callback`` runs before the task
(:meth:`ketch.authoring.tasks.BaseTask.execute`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ketch.worker.runner.outcome import Outcome


def callback_kind(payload: dict[str, Any], outcome: Outcome) -> str | None:
    """Which callback list the outcome calls (None: none)."""
    if outcome.state == "success":
        return "on_success_callback"
    if outcome.state == "skipped":
        return "on_skipped_callback"
    if outcome.state == "failed":
        try_number = int(payload.get("try_number") or 0)
        max_tries = int(payload.get("max_tries") or 0)
        will_retry = outcome.retry and try_number <= max_tries
        return "on_retry_callback" if will_retry else "on_failure_callback"
    return None


def run_state_callbacks(payload: dict[str, Any], outcome: Outcome) -> None:
    """Run the task's callbacks for ``outcome`` (nothing if no task ran in this process)."""
    from ketch.authoring.context import running_context
    from ketch.authoring.task_runtime import run_callbacks, take_last_executed

    executed = take_last_executed()
    kind = callback_kind(payload, outcome)
    if executed is None or kind is None:
        return
    callbacks = getattr(executed.task, kind, None) or []
    if not callbacks:
        return
    context = dict(executed.context)
    if outcome.state == "failed":
        error = executed.error
        if error is None and outcome.error:
            error = RuntimeError(outcome.error)
        context["exception"] = error
    with running_context(context):
        run_callbacks(callbacks, kind, context)
