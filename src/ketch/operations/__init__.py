"""User actions on DAGs, runs, task instances and pools: one implementation for the REST API and the CLI.

Every function takes a SQLAlchemy session and commits nothing: the caller commits
(a REST request, a CLI command), so an action is all-or-nothing. The semantics
mirror Airflow 3's (``trigger_dag_run``, ``clear_task_instances``,
``set_task_instance_state``, ``set_dag_run_state_to_*``) so an Airflow user's
expectations carry over.

Writes flag the affected run ``needs_evaluation`` (the scheduler then looks at the
whole run once) and, once the caller's transaction commits, call every callback in
:data:`on_change` — ``ketch standalone`` registers ``scheduler.wake`` there so an
in-process scheduler reacts at once instead of on its next idle tick.

One module per resource, all re-exported here (``operations.trigger_dag``):

- :mod:`~ketch.operations.errors`: what an action reports back (not found, invalid, exists);
- :mod:`~ketch.operations.dags`: get, list, pause;
- :mod:`~ketch.operations.runs`: get, list, progress, trigger and run ids, mark, cancel;
- :mod:`~ketch.operations.task_instances`: get, list, tries, clear, mark;
- :mod:`~ketch.operations.xcom`: XCom entries (return values) to read;
- :mod:`~ketch.operations.pools`, :mod:`~ketch.operations.import_errors`;
- :mod:`~ketch.operations._common`: change notification, pages, shared state writes.
"""

from __future__ import annotations

from ketch.operations._common import Page, on_change
from ketch.operations.dag_source import DagSource, get_dag_source
from ketch.operations.dags import (
    DagSummary,
    get_dag,
    list_dag_models,
    list_dags,
    serialized_dag,
    set_paused,
)
from ketch.operations.errors import (
    DagNotFound,
    DagRunAlreadyExists,
    DagRunNotFound,
    DefaultPoolNotDeletable,
    InvalidRequest,
    NotFound,
    OperationError,
    PoolNotFound,
    TaskNotFound,
)
from ketch.operations.import_errors import list_import_errors
from ketch.operations.pools import PoolStats, delete_pool, get_pool, list_pools, set_pool
from ketch.operations.runs import (
    MARKABLE_RUN_STATES,
    RESERVED_RUN_ID_PREFIXES,
    RunProgress,
    RunSummary,
    cancel_dag_run,
    check_run_id,
    generate_manual_run_id,
    get_dag_run,
    list_dag_runs,
    recent_runs,
    run_progress,
    serialized_dag_for_run,
    set_dag_run_state,
    trigger_dag,
)
from ketch.operations.task_instances import (
    MARKABLE_TI_STATES,
    check_task_instance,
    clear_task_instances,
    get_task_instance,
    list_mapped_task_instances,
    list_task_instance_tries,
    list_task_instances,
    set_task_instance_state,
    tries_by_task_instance,
)
from ketch.operations.xcom import XComEntry, XComNotFound, get_xcom_entry, list_xcom_entries

__all__ = [
    "MARKABLE_RUN_STATES",
    "MARKABLE_TI_STATES",
    "RESERVED_RUN_ID_PREFIXES",
    "DagNotFound",
    "DagRunAlreadyExists",
    "DagRunNotFound",
    "DagSource",
    "DagSummary",
    "DefaultPoolNotDeletable",
    "InvalidRequest",
    "NotFound",
    "OperationError",
    "Page",
    "PoolNotFound",
    "PoolStats",
    "RunProgress",
    "RunSummary",
    "TaskNotFound",
    "XComEntry",
    "XComNotFound",
    "cancel_dag_run",
    "check_run_id",
    "check_task_instance",
    "clear_task_instances",
    "delete_pool",
    "generate_manual_run_id",
    "get_dag",
    "get_dag_run",
    "get_dag_source",
    "get_pool",
    "get_task_instance",
    "get_xcom_entry",
    "list_dag_models",
    "list_dag_runs",
    "list_dags",
    "list_import_errors",
    "list_mapped_task_instances",
    "list_pools",
    "list_task_instance_tries",
    "list_task_instances",
    "list_xcom_entries",
    "on_change",
    "recent_runs",
    "run_progress",
    "serialized_dag",
    "serialized_dag_for_run",
    "set_dag_run_state",
    "set_paused",
    "set_pool",
    "set_task_instance_state",
    "tries_by_task_instance",
    "trigger_dag",
]
