"""DAG object -> :class:`ketch.serialization.SerializedDag` (what the DAG processor stores).

Runs the whole-graph checks first (cycles, cron syntax, param defaults), so a
broken DAG becomes an import error naming its file instead of a stored DAG.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ketch.authoring import _defaults
from ketch.authoring.mapped import MappedTask
from ketch.authoring.mapped_group import MappedTaskGroup, closest_mapped_group
from ketch.authoring.timetables import serialize_schedule

if TYPE_CHECKING:
    from ketch.authoring.dag import DAG
    from ketch.authoring.taskgroup import TaskGroup
    from ketch.authoring.tasks import BaseTask
    from ketch.serialization import (
        SerializedDag,
        SerializedExpand,
        SerializedTask,
        SerializedTaskGroup,
    )


def _relatives(dag: DAG, task_id: str, direction: Callable[[BaseTask], set[str]]) -> set[str]:
    """Every task reachable from ``task_id`` following ``direction`` (excluding itself)."""
    seen: set[str] = set()
    stack = list(direction(dag.tasks[task_id]))
    while stack:
        tid = stack.pop()
        if tid not in seen:
            seen.add(tid)
            stack.extend(direction(dag.tasks[tid]))
    return seen


def effective_priority_weight(dag: DAG, task: BaseTask) -> int:
    """Airflow's priority_weight_total: own weight plus down- or upstream weights by weight_rule."""
    if task.weight_rule == "absolute":
        return task.priority_weight
    if task.weight_rule == "downstream":
        others = _relatives(dag, task.task_id, lambda t: t.downstream_task_ids)
    else:
        others = _relatives(dag, task.task_id, lambda t: t.upstream_task_ids)
    return task.priority_weight + sum(dag.tasks[t].priority_weight for t in others)


def serialize_task(dag: DAG, task: BaseTask) -> SerializedTask:
    from ketch.serialization import SerializedTask

    return SerializedTask(
        task_id=task.task_id,
        kind=task.kind,  # type: ignore[arg-type]
        upstream_task_ids=sorted(task.upstream_task_ids),
        downstream_task_ids=sorted(task.downstream_task_ids),
        trigger_rule=task.trigger_rule,
        retries=task.retries,
        retry_delay=task.retry_delay,
        retry_exponential_backoff=task.retry_exponential_backoff,
        max_retry_delay=task.max_retry_delay,
        execution_timeout=task.execution_timeout,
        priority_weight=effective_priority_weight(dag, task),
        pool=task.pool,
        pool_slots=task.pool_slots,
        executor_config=task.executor_config,
        max_active_tis_per_dag=task.max_active_tis_per_dag,
        max_active_tis_per_dagrun=task.max_active_tis_per_dagrun,
        depends_on_past=task.depends_on_past,
        wait_for_downstream=task.wait_for_downstream,
        ignore_first_depends_on_past=task.ignore_first_depends_on_past,
        ignore_downstream_trigger_rules=getattr(task, "ignore_downstream_trigger_rules", True),
        doc_md=task.doc_md,
        doc=task.doc,
        doc_rst=task.doc_rst,
        doc_json=task.doc_json,
        doc_yaml=task.doc_yaml,
        task_display_name=task._task_display_name,
        owner=task.owner,
        email=list(task.email),
        email_on_failure=task.email_on_failure,
        email_on_retry=task.email_on_retry,
        task_group_id=task.task_group.group_id if task.task_group is not None else None,
        label=task.label,
        expand=_expand_of(task),
        mapped_group_id=group.group_id if (group := closest_mapped_group(task)) else None,
    )


def _expand_of(task: BaseTask) -> SerializedExpand | None:
    """A mapped task's expand input, or that of the mapped group it is in."""
    if isinstance(task, MappedTask):
        return task.serialize_expand()
    group = closest_mapped_group(task)
    return group.serialize_expand() if group is not None else None


def serialize_task_group(group: TaskGroup) -> SerializedTaskGroup:
    from ketch.serialization import SerializedTaskGroup

    assert group.group_id is not None and group.label is not None
    parent = group.parent_group
    return SerializedTaskGroup(
        group_id=group.group_id,
        label=group.label,
        parent_group_id=parent.group_id if parent is not None else None,
        prefix_group_id=group.prefix_group_id,
        tooltip=group.tooltip,
        ui_color=group.ui_color,
        ui_fgcolor=group.ui_fgcolor,
        children=list(group.children),
        upstream_group_ids=sorted(group.upstream_group_ids),
        downstream_group_ids=sorted(group.downstream_group_ids),
        upstream_task_ids=sorted(group.upstream_task_ids),
        downstream_task_ids=sorted(group.downstream_task_ids),
        expand=group.serialize_expand() if isinstance(group, MappedTaskGroup) else None,
    )


def serialize_dag(dag: DAG, dags_folder: Path) -> SerializedDag:
    """Validate ``dag`` and return its serialized form (fileloc absolute, relative_fileloc to the folder)."""
    from ketch.serialization import SerializedDag

    dag.validate()
    defaults = _defaults.parse_defaults()
    fileloc = os.path.abspath(dag.fileloc)
    return SerializedDag(
        dag_id=dag.dag_id,
        fileloc=fileloc,
        relative_fileloc=os.path.relpath(fileloc, os.path.abspath(dags_folder)),
        description=dag.description,
        doc_md=dag.doc_md,
        doc=dag.doc,
        doc_rst=dag.doc_rst,
        doc_json=dag.doc_json,
        doc_yaml=dag.doc_yaml,
        tags=list(dag.tags),
        dag_display_name=dag._dag_display_name,
        owner_links=dict(dag.owner_links),
        render_template_as_native_obj=dag.render_template_as_native_obj,
        max_consecutive_failed_dag_runs=dag.max_consecutive_failed_dag_runs,
        schedule=serialize_schedule(
            dag.schedule,
            timezone=dag.timezone,
            create_cron_data_intervals=defaults["create_cron_data_intervals"],
            create_delta_data_intervals=defaults["create_delta_data_intervals"],
        ),
        start_date=dag.start_date,
        end_date=dag.end_date,
        catchup=dag.catchup,
        max_active_runs=dag.max_active_runs,
        max_active_tasks=dag.max_active_tasks,
        dagrun_timeout=dag.dagrun_timeout,
        is_paused_upon_creation=dag.is_paused_upon_creation,
        params={name: p.serialize() for name, p in dag.params.items()},
        has_on_success_callback=bool(getattr(dag, "on_success_callback", None)),
        has_on_failure_callback=bool(getattr(dag, "on_failure_callback", None)),
        tasks={tid: serialize_task(dag, t) for tid, t in dag.tasks.items()},
        task_groups={gid: serialize_task_group(g) for gid, g in dag.task_group_dict.items()},
    )
