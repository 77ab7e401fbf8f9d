"""Task groups: ``with TaskGroup(...)`` and ``@task_group``, with Airflow 3's semantics.

A group prefixes the ids of the tasks and groups created inside it (``group.task``,
``outer.inner.task``) unless ``prefix_group_id=False``; its ``default_args`` are merged
over the DAG's (and an enclosing group's), the innermost winning. ``>>``/``<<`` with a
group link its roots (tasks with no upstream inside the group) or its leaves (no
downstream inside the group); an empty group passes through to what was linked into it.
Groups only shape ids and defaults: the scheduler sees plain tasks with prefixed ids.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ketch.authoring import _context
from ketch.authoring.dependencies import DependencyMixin
from ketch.authoring.tasks import BaseTask
from ketch.exceptions import DagDefinitionError

if TYPE_CHECKING:
    from ketch.authoring.dag import DAG

_GROUP_ID = re.compile(r"[A-Za-z0-9_\-]+")  # Airflow's GROUP_KEY_REGEX: no dots
_GROUP_ID_MAX = 200


def _check_group_id(group_id: Any) -> str:
    if not isinstance(group_id, str):
        raise DagDefinitionError(f"task group id must be a string, not {group_id!r}")
    if len(group_id) > _GROUP_ID_MAX:
        raise DagDefinitionError(
            f"task group id {group_id!r} is longer than {_GROUP_ID_MAX} characters"
        )
    if not _GROUP_ID.fullmatch(group_id):
        raise DagDefinitionError(
            f"invalid task group id {group_id!r}: use letters, digits, dashes and underscores"
        )
    return group_id


def _check_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DagDefinitionError(f"task group {name} must be a string, not {value!r}")
    return value


class TaskGroup(DependencyMixin):
    """A named set of tasks (and groups) of one DAG, shown together (Airflow's TaskGroup).

    The root group of a DAG has ``group_id`` None; every DAG has one (``dag.task_group``).
    """

    def __init__(
        self,
        group_id: str | None,
        prefix_group_id: bool = True,
        parent_group: TaskGroup | None = None,
        dag: DAG | None = None,
        default_args: dict[str, Any] | None = None,
        tooltip: str = "",
        ui_color: str = "CornflowerBlue",
        ui_fgcolor: str = "#000",
        add_suffix_on_collision: bool = False,
        group_display_name: str = "",
    ) -> None:
        self._group_id = None if group_id is None else _check_group_id(group_id)
        self.prefix_group_id = bool(prefix_group_id)
        self.tooltip = _check_str("tooltip", tooltip)
        self.ui_color = _check_str("ui_color", ui_color)
        self.ui_fgcolor = _check_str("ui_fgcolor", ui_fgcolor)
        self.group_display_name = _check_str("group_display_name", group_display_name)
        if default_args is not None and not isinstance(default_args, dict):
            raise DagDefinitionError(
                f"task group default_args must be a dict, not {default_args!r}"
            )
        self.default_args: dict[str, Any] = copy.deepcopy(default_args or {})
        self.children: dict[str, BaseTask | TaskGroup] = {}
        self.upstream_group_ids: set[str] = set()
        self.downstream_group_ids: set[str] = set()
        self.upstream_task_ids: set[str] = set()
        self.downstream_task_ids: set[str] = set()
        if group_id is None:  # the root group of a DAG (DAG.__init__ passes itself)
            if dag is None:
                raise DagDefinitionError("the root task group needs its DAG")
            self.parent_group: TaskGroup | None = None
            self.dag: DAG = dag
            self.used_group_ids: set[str] = set()
            return
        if parent_group is None:
            parent_group = _context.current_group(dag or _context.current_dag())
        the_dag = dag or (parent_group.dag if parent_group is not None else None)
        if the_dag is None or parent_group is None:
            raise DagDefinitionError(
                f"task group {group_id!r}: TaskGroup can only be used inside a dag"
            )
        if parent_group.dag is not the_dag:
            raise DagDefinitionError(
                f"task group {group_id!r}: cannot mix task groups from different DAGs "
                f"({parent_group.dag.dag_id} and {the_dag.dag_id})"
            )
        self.dag = the_dag
        self.parent_group = parent_group
        self.used_group_ids = the_dag.task_group.used_group_ids  # one set per DAG
        self._check_collision(add_suffix_on_collision)
        parent_group.add(self)
        if parent_group.default_args:
            self.default_args = {**parent_group.default_args, **self.default_args}
        gid = self.group_id
        assert gid is not None
        self.used_group_ids.update({gid, self.upstream_join_id, self.downstream_join_id})

    def _check_collision(self, add_suffix: bool) -> None:
        if self.group_id not in self.used_group_ids:
            return
        if not add_suffix:
            raise DagDefinitionError(
                f"DAG {self.dag.dag_id!r}: group_id '{self._group_id}' has already been added to the DAG"
            )
        assert self._group_id is not None and self.group_id is not None
        core = re.split(r"__\d+$", self._group_id)[0]
        full_core = re.split(r"__\d+$", self.group_id)[0]
        suffixes = [
            int(m.group(1))
            for used in self.used_group_ids
            if (m := re.fullmatch(rf"{re.escape(full_core)}__(\d+)", used))
        ]
        self._group_id = f"{core}__{max(suffixes, default=0) + 1}"

    # ----- ids -----------------------------------------------------------------

    @property
    def group_id(self) -> str | None:
        """The full id (prefixed by the enclosing groups that prefix); None for the root."""
        parent = self.parent_group
        if self._group_id and parent is not None and parent.prefix_group_id and parent._group_id:
            return parent.child_id(self._group_id)
        return self._group_id

    @property
    def node_id(self) -> str | None:
        return self.group_id

    @property
    def is_root(self) -> bool:
        return not self._group_id

    @property
    def label(self) -> str | None:
        """The group's name without its parents' prefix (or its display name), for the UI."""
        return self.group_display_name or self._group_id

    def child_id(self, label: str) -> str:
        """``label`` prefixed with this group's id when it prefixes, else ``label`` as is."""
        if self.prefix_group_id:
            group_id = self.group_id
            if group_id:
                return f"{group_id}.{label}"
        return label

    @property
    def upstream_join_id(self) -> str:
        return f"{self.group_id}.upstream_join_id"

    @property
    def downstream_join_id(self) -> str:
        return f"{self.group_id}.downstream_join_id"

    # ----- members ---------------------------------------------------------------

    def add(self, node: BaseTask | TaskGroup) -> None:
        """Add a task or a group to this group (done for you when it is created inside)."""
        key = node.node_id
        assert key is not None
        if key in self.children and self.children[key] is not node:
            kind = "Task" if isinstance(node, BaseTask) else "Task Group"
            raise DagDefinitionError(
                f"DAG {self.dag.dag_id!r}: {kind} id '{key}' has already been added to the DAG"
            )
        self.children[key] = node

    def __iter__(self) -> Iterator[BaseTask]:
        """Every task in this group and its nested groups, in definition order."""
        for child in self.children.values():
            if isinstance(child, TaskGroup):
                yield from child
            else:
                yield child

    def iter_groups(self) -> Iterator[TaskGroup]:
        """This group's nested groups (all levels), in definition order, not itself."""
        for child in self.children.values():
            if isinstance(child, TaskGroup):
                yield child
                yield from child.iter_groups()

    def get_task_group_dict(self) -> dict[str | None, TaskGroup]:
        """Airflow's flat ``group_id -> TaskGroup`` map, this group included."""
        return {self.group_id: self, **{g.group_id: g for g in self.iter_groups()}}

    def has_task(self, task: BaseTask) -> bool:
        return any(t is task for t in self)

    def get_child_by_label(self, label: str) -> BaseTask | TaskGroup:
        return self.children[self.child_id(label)]

    def __getitem__(self, label: str) -> BaseTask | TaskGroup:
        try:
            return self.get_child_by_label(label)
        except KeyError:
            raise KeyError(f"Task {label!r} not found") from None

    def path(self) -> list[str]:
        """The full ids of the groups from the outermost down to this one (root excluded)."""
        out: list[str] = []
        group: TaskGroup | None = self
        while group is not None and group.group_id is not None:
            out.append(group.group_id)
            group = group.parent_group
        return out[::-1]

    # ----- dependencies --------------------------------------------------------------

    @property
    def roots(self) -> list[BaseTask]:
        """Tasks of the group with no upstream task inside the group."""
        tasks = list(self)
        ids = {t.task_id for t in tasks}
        return [t for t in tasks if t.upstream_task_ids.isdisjoint(ids)]

    @property
    def leaves(self) -> list[BaseTask]:
        """Tasks of the group with no downstream task inside the group.

        An empty group stands for what was linked into it (Airflow's ``find_leaves``): its
        upstream tasks, else its parent group's leaves.
        """
        group: TaskGroup | None = self
        while group is not None:
            tasks = list(group)
            ids = {t.task_id for t in tasks}
            found = [t for t in tasks if t.downstream_task_ids.isdisjoint(ids)]
            if found:
                return found
            if group.upstream_task_ids:
                return [self.dag.tasks[tid] for tid in sorted(group.upstream_task_ids)]
            group = group.parent_group
        return []

    def _note_upstream(self, nodes: list[DependencyMixin]) -> None:
        for node in nodes:
            if isinstance(node, TaskGroup) and node.group_id and self.group_id:
                self.upstream_group_ids.add(node.group_id)
                node.downstream_group_ids.add(self.group_id)
            self.upstream_task_ids.update(t.task_id for t in node.leaves)

    def _note_downstream(self, nodes: list[DependencyMixin]) -> None:
        for node in nodes:
            if not isinstance(node, TaskGroup):
                self.downstream_task_ids.update(t.task_id for t in node.roots)

    # ----- context manager ------------------------------------------------------------

    def __enter__(self) -> TaskGroup:
        _context.push_group(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _context.pop_group()

    def __repr__(self) -> str:
        return f"<TaskGroup {self.group_id}>" if self.group_id else "<TaskGroup (root)>"


_TASK_GROUP_SIGNATURE = inspect.signature(TaskGroup.__init__)


class TaskGroupFactory:
    """What ``@task_group`` returns: call it inside a DAG to build the group."""

    def __init__(
        self,
        function: Callable[..., Any],
        tg_kwargs: dict[str, Any] | None = None,
        partial_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not callable(function):
            raise TypeError(f"@task_group decorates a function, not {function!r}")
        kwargs = dict(tg_kwargs or {})
        _TASK_GROUP_SIGNATURE.bind_partial(None, **kwargs)  # unknown argument: TypeError
        kwargs.setdefault("group_id", function.__name__)
        functools.update_wrapper(self, function)
        self.function = function
        self.tg_kwargs = kwargs
        self.partial_kwargs: dict[str, Any] = dict(partial_kwargs or {})

    def override(self, **kwargs: Any) -> TaskGroupFactory:
        return TaskGroupFactory(self.function, {**self.tg_kwargs, **kwargs}, self.partial_kwargs)

    # Mapped task groups (ketch.authoring.mapped_group), as in Airflow's _TaskGroupFactory.

    def partial(self, **kwargs: Any) -> TaskGroupFactory:
        """Arguments every instance of the mapped group gets as they are."""
        from ketch.authoring import mapped_group

        mapped_group.check_arg_names(self, "partial", kwargs)
        mapped_group.prevent_duplicates(self.partial_kwargs, kwargs, "duplicate partial")
        return TaskGroupFactory(self.function, self.tg_kwargs, {**kwargs, **self.partial_kwargs})

    def expand(self, **kwargs: Any) -> Any:
        """A mapped task group: one instance of each of its tasks per element (the cross
        product of the arguments, the last varying fastest)."""
        from ketch.authoring import mapped_group

        return mapped_group.expand(self, kwargs)

    def expand_kwargs(self, kwargs: Any) -> Any:
        """A mapped task group: one instance per dict of keyword arguments."""
        from ketch.authoring import mapped_group

        return mapped_group.expand_kwargs(self, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Build the group; return the function's return value, or the group if it is None.

        As in Airflow: a function returning a task (its XComArg) lets ``>>`` bind to that
        task; one returning nothing lets ``>>`` bind to the whole group.
        """
        with TaskGroup(add_suffix_on_collision=True, **self.tg_kwargs) as group:
            if self.function.__doc__ and not group.tooltip:
                group.tooltip = self.function.__doc__
            retval = self.function(*args, **kwargs)
        return group if retval is None else retval


def task_group(python_callable: Any = None, **tg_kwargs: Any) -> Any:
    """``@task_group`` / ``@task_group(group_id=..., default_args=..., ...)``.

    Like Airflow, the group id defaults to the function's name, a second call of the
    same function gets ``name__1`` and so on, and the docstring becomes the tooltip.
    A positional first argument that is not a function is ignored, as in Airflow
    (``@task_group("x")`` names the group after the function, not ``x``).
    """
    if callable(python_callable) and not tg_kwargs:
        return TaskGroupFactory(python_callable, tg_kwargs)
    return functools.partial(TaskGroupFactory, tg_kwargs=tg_kwargs)
