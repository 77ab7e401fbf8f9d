"""The states of DAG runs and task instances, named and valued as in Airflow 3.

Kept free of heavy imports: the task-try process imports this module too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum


class DagRunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


class TaskInstanceState(StrEnum):
    """A task instance's state. ``None`` (no state yet) is stored as SQL NULL."""

    SCHEDULED = "scheduled"  # upstreams resolved; waiting for a free slot
    QUEUED = "queued"  # handed to the executor; the try has not started yet
    RUNNING = "running"  # the try called the execution API's start
    SUCCESS = "success"
    FAILED = "failed"
    UP_FOR_RETRY = "up_for_retry"  # failed; a new try is due at next_retry_at
    # A sensor in reschedule mode found nothing yet: it holds no slot, and its next poke (a
    # new try row, see scheduler/task_state.py) is due at next_retry_at.
    UP_FOR_RESCHEDULE = "up_for_reschedule"
    UPSTREAM_FAILED = "upstream_failed"
    SKIPPED = "skipped"
    REMOVED = "removed"  # the task no longer exists in the DAG


class TriggerRule(StrEnum):
    ALL_SUCCESS = "all_success"
    ALL_FAILED = "all_failed"
    ALL_DONE = "all_done"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    NONE_FAILED = "none_failed"
    NONE_SKIPPED = "none_skipped"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"
    ONE_DONE = "one_done"
    ALL_SKIPPED = "all_skipped"
    ALL_DONE_MIN_ONE_SUCCESS = "all_done_min_one_success"
    ALWAYS = "always"


class DagRunType(StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"


FINISHED_TI_STATES: frozenset[TaskInstanceState] = frozenset(
    {
        TaskInstanceState.SUCCESS,
        TaskInstanceState.FAILED,
        TaskInstanceState.UPSTREAM_FAILED,
        TaskInstanceState.SKIPPED,
        TaskInstanceState.REMOVED,
    }
)
"""States a task instance stays in unless a user clears it."""

UNFINISHED_TI_STATES: frozenset[TaskInstanceState | None] = frozenset(
    {
        None,
        TaskInstanceState.SCHEDULED,
        TaskInstanceState.QUEUED,
        TaskInstanceState.RUNNING,
        TaskInstanceState.UP_FOR_RETRY,
        TaskInstanceState.UP_FOR_RESCHEDULE,
    }
)

FAILED_TI_STATES: frozenset[TaskInstanceState] = frozenset(
    {TaskInstanceState.FAILED, TaskInstanceState.UPSTREAM_FAILED}
)

ACTIVE_RUN_STATES: frozenset[DagRunState] = frozenset({DagRunState.QUEUED, DagRunState.RUNNING})


def mapped_task_state(states: Iterable[str | None]) -> str | None:
    """One state for the instances of a mapped task (for displays and run completion)."""
    counts: dict[str | None, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return mapped_task_state_of_counts(counts)


def mapped_task_state_of_counts(counts: Mapping[str | None, int]) -> str | None:
    """:func:`mapped_task_state` from the number of instances in each state: None while
    any has none, running while any is unfinished, then failed, upstream_failed, skipped
    when all were skipped, else success. Removed instances (a revision after a clear made
    them so) do not count, unless every instance is removed."""
    present = {state for state, n in counts.items() if n > 0}
    if len(present) > 1:
        present.discard(TaskInstanceState.REMOVED.value)
    if present == {TaskInstanceState.REMOVED.value}:
        return TaskInstanceState.REMOVED.value
    if None in present:
        return None
    finished = {s.value for s in FINISHED_TI_STATES}
    if present - finished:
        return TaskInstanceState.RUNNING.value
    for state in (TaskInstanceState.FAILED.value, TaskInstanceState.UPSTREAM_FAILED.value):
        if state in present:
            return state
    if present == {TaskInstanceState.SKIPPED.value}:
        return TaskInstanceState.SKIPPED.value
    return TaskInstanceState.SUCCESS.value
