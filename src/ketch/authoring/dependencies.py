"""Dependencies between DAG nodes: ``>>``/``<<``, ``set_upstream``/``set_downstream``.

Its own module because tasks, XComArgs and task groups all take part in them
(:class:`DependencyMixin`) and a task group or an XComArg must not need the task base
class to do so: ``link_nodes`` only touches the tasks' id sets and DAGs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ketch.exceptions import DagDefinitionError

if TYPE_CHECKING:
    from ketch.authoring.tasks import BaseTask


class DependencyMixin:
    """``>>`` and ``<<`` between tasks, XComArgs, task groups and lists of them.

    ``a >> b`` links every leaf of ``a`` to every root of ``b``: a task is its own root
    and leaf, a task group's roots and leaves are its first and last tasks.
    """

    @property
    def roots(self) -> list[BaseTask]:
        raise NotImplementedError

    @property
    def leaves(self) -> list[BaseTask]:
        raise NotImplementedError

    def _as_tasks(self) -> list[BaseTask]:
        return self.roots

    def _note_upstream(self, nodes: list[DependencyMixin]) -> None:
        """Told what was linked upstream of it (task groups remember it)."""

    def _note_downstream(self, nodes: list[DependencyMixin]) -> None:
        """Told what was linked downstream of it (task groups remember it)."""

    def set_downstream(self, other: Any) -> None:
        link_nodes(self, other)

    def set_upstream(self, other: Any) -> None:
        link_nodes(other, self)

    def __rshift__(self, other: Any) -> Any:
        self.set_downstream(other)
        return other

    def __lshift__(self, other: Any) -> Any:
        self.set_upstream(other)
        return other

    def __rrshift__(self, other: Any) -> Any:
        # [a, b] >> self
        self.set_upstream(other)
        return self

    def __rlshift__(self, other: Any) -> Any:
        # [a, b] << self
        self.set_downstream(other)
        return self


def _nodes_of(obj: Any) -> list[DependencyMixin]:
    if isinstance(obj, DependencyMixin):
        return [obj]
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes | dict):
        return [n for item in obj for n in _nodes_of(item)]
    raise TypeError(
        f"cannot set a dependency on {obj!r}; expected a task, XComArg, task group or list"
    )


def _tasks_of(obj: Any) -> list[BaseTask]:
    return [t for node in _nodes_of(obj) for t in node.roots]


def link_nodes(upstream: Any, downstream: Any) -> None:
    """``upstream >> downstream`` for tasks, XComArgs, task groups and lists of them."""
    ups, downs = _nodes_of(upstream), _nodes_of(downstream)
    leaves = [t for node in ups for t in node.leaves]
    for node in downs:
        node._note_upstream(ups)
    for node in ups:
        node._note_downstream(downs)
    roots = [t for node in downs for t in node.roots]
    for up in leaves:
        for down in roots:
            link_tasks(up, down)


def link_tasks(up: BaseTask, down: BaseTask) -> None:
    """``up >> down`` for two tasks: a task of no DAG joins the other's DAG."""
    dag = up.dag or down.dag
    if up.dag is not None and down.dag is not None and up.dag is not down.dag:
        raise DagDefinitionError(
            f"cannot link {up.task_id!r} ({up.dag.dag_id}) and {down.task_id!r} ({down.dag.dag_id}): "
            "tasks are in different DAGs"
        )
    for t in (up, down):
        if t.dag is None and dag is not None:
            t.dag = dag
            dag.add_task(t)
    up.downstream_task_ids.add(down.task_id)
    down.upstream_task_ids.add(up.task_id)
