"""Which DAG and which task group a definition being written belongs to.

``with DAG(...)``/``@dag`` and ``with TaskGroup(...)``/``@task_group`` push here; a
task or group created meanwhile asks :func:`current_dag` and :func:`current_group`
(Airflow's ``DagContext`` and ``TaskGroupContext``). Kept apart from ``dag.py`` and
``tasks.py`` so neither has to import the other at run time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ketch.authoring.dag import DAG
    from ketch.authoring.taskgroup import TaskGroup

_dags: list[DAG] = []
_groups: list[TaskGroup] = []


def current_dag() -> DAG | None:
    """The DAG of the innermost ``with DAG(...)`` block or running ``@dag`` function."""
    return _dags[-1] if _dags else None


def push_dag(dag: DAG) -> None:
    _dags.append(dag)


def pop_dag() -> DAG:
    return _dags.pop()


def current_group(dag: DAG | None) -> TaskGroup | None:
    """The innermost open task group of ``dag``, else its root group (None without a DAG)."""
    for group in reversed(_groups):
        if group.dag is dag:
            return group
    return dag.task_group if dag is not None else None


def push_group(group: TaskGroup) -> None:
    _groups.append(group)


def pop_group() -> TaskGroup:
    return _groups.pop()


@contextmanager
def detached() -> Iterator[None]:
    """No current DAG or group inside: a task created here belongs to no DAG (a mapped
    task's instance is built in the try, and must not join the DAG it was loaded from)."""
    dags, groups = _dags[:], _groups[:]
    _dags.clear()
    _groups.clear()
    try:
        yield
    finally:
        _dags[:] = dags
        _groups[:] = groups
