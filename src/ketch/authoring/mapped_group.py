"""Mapped task groups: ``@task_group`` functions' ``.partial``/``.expand``/``.expand_kwargs``.

Airflow's ``MappedTaskGroup`` and ``MappedArgument``: the function is called once, at
parse time, with a :class:`MappedArgument` standing for each mapped keyword argument;
every task created inside becomes a mapped task whose number of instances is the group's
(the cross product of ``.expand`` arguments, or one per ``.expand_kwargs`` item). In the
try of instance ``map_index`` a MappedArgument resolves to that instance's element, and a
value of another task of the same mapped group is that task's value of the same
``map_index`` (:func:`same_group_map_index`); a task outside the group gets the list of
every instance's value, as from a mapped task.

The group's expand input is linked upstream of its root tasks (and of each task taking
a MappedArgument), as Airflow's ``MappedTaskGroup.__exit__`` does. What the scheduler
does with it is in :mod:`ketch.scheduler.mapped_group`.

Not supported (a :class:`DagDefinitionError` naming the group): mapping inside a mapped
group (a task that ``.expand()``s, or a mapped group nested in another), and branch or
short-circuit tasks inside one. Like Airflow, a task with trigger rule ``always`` is
refused in a mapped group.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from ketch.authoring.mapped import (
    DICT_OF_LISTS,
    LIST_OF_DICTS,
    MappedTask,
    expand_input_kwargs,
    serialize_expand_input,
)
from ketch.authoring.taskgroup import TaskGroup
from ketch.authoring.tasks import BaseTask
from ketch.authoring.xcom_args import DagParam, XComArg, XComPull, find_xcom_args
from ketch.exceptions import DagDefinitionError
from ketch.states import TriggerRule

if TYPE_CHECKING:
    from ketch.authoring.taskgroup import TaskGroupFactory
    from ketch.serialization import SerializedExpand

_REFUSED_KINDS = {"branch": "a branch task", "short_circuit": "a short-circuit task"}


class MappedTaskGroup(TaskGroup):
    """A task group whose every task has one instance per element of its expand input."""

    def __init__(self, *, expand_kind: str, expand_value: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.expand_kind = expand_kind
        self.expand_value = expand_value

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if exc[0] is not None:
            return
        self._check_members()
        for ref in find_xcom_args(self.expand_value):
            self.set_upstream(ref.operator)

    def _check_members(self) -> None:
        for child in self.iter_groups():
            if isinstance(child, MappedTaskGroup):
                raise DagDefinitionError(
                    f"task group {child.group_id!r}: a mapped task group inside the mapped "
                    f"task group {self.group_id!r} is not supported"
                )
        for task in self:
            self._check_task(task)

    def _check_task(self, task: BaseTask) -> None:
        where = f"task {task.task_id!r} in the mapped task group {self.group_id!r}"
        if isinstance(task, MappedTask):
            raise DagDefinitionError(
                f"{where}: mapping a task inside a mapped task group (.expand() or "
                ".expand_kwargs()) is not supported"
            )
        if task.kind in _REFUSED_KINDS:
            raise DagDefinitionError(
                f"{where}: {_REFUSED_KINDS[task.kind]} inside a mapped task group is not supported"
            )
        if task.trigger_rule == TriggerRule.ALWAYS:
            raise DagDefinitionError(
                f"{where}: Task-generated mapping within a mapped task group is not allowed "
                "with trigger rule 'always'"
            )

    def serialize_expand(self) -> SerializedExpand:
        return serialize_expand_input(self.expand_kind, self.expand_value)

    def mapped_kwargs(self, map_index: int, xcom_pull: XComPull) -> dict[str, Any]:
        """Instance ``map_index``'s mapped keyword arguments, upstream values resolved."""
        return expand_input_kwargs(
            f"task group {self.group_id!r}",
            self.expand_kind,
            self.expand_value,
            map_index,
            xcom_pull,
        )

    def __repr__(self) -> str:
        return f"<MappedTaskGroup {self.group_id}>"


class MappedArgument(XComArg):
    """What a mapped group's function gets for a mapped keyword argument: in the try of
    instance ``map_index``, that instance's element (Airflow's ``MappedArgument``)."""

    def __init__(self, group: MappedTaskGroup, key: str) -> None:  # no operator: no task
        self.group = group
        self.key = key

    def references(self) -> list[XComArg]:
        return find_xcom_args(self.group.expand_value)

    @property
    def roots(self) -> list[BaseTask]:
        raise DagDefinitionError(
            f"task group {self.group.group_id!r}: its argument {self.key!r} is a value, not "
            "a task: pass it to a task instead of linking it with >> or <<"
        )

    @property
    def leaves(self) -> list[BaseTask]:
        return self.roots

    def resolve(self, xcom_pull: XComPull) -> Any:
        from ketch.authoring.context import get_current_context

        map_index = int(get_current_context().get("map_index", -1))
        if map_index < 0:
            raise RuntimeError(
                f"task group {self.group.group_id!r}: its argument {self.key!r} read "
                "outside a mapped instance"
            )
        kwargs = self.group.mapped_kwargs(map_index, xcom_pull)
        if self.key not in kwargs:
            raise TypeError(
                f"task group {self.group.group_id!r}: instance {map_index} has no value for "
                f"argument {self.key!r}"
            )
        return kwargs[self.key]

    def __getitem__(self, key: str) -> XComArg:
        raise TypeError(f"the mapped argument {self.key!r} cannot be subscripted")

    def __repr__(self) -> str:
        return f"MappedArgument({self.group.group_id!r}, {self.key!r})"


# ----- the factory's partial / expand / expand_kwargs ------------------------------


def _is_mappable(value: Any) -> bool:
    """Airflow's ``is_mappable``: an upstream value, a list or a dict."""
    return not isinstance(value, DagParam) and isinstance(value, XComArg | list | dict)


def check_arg_names(factory: TaskGroupFactory, func: str, kwargs: dict[str, Any]) -> None:
    """Airflow's ``_validate_arg_names``: names the function takes; expand() values mappable."""
    params = inspect.signature(factory.function).parameters
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [name for name in kwargs if name not in params and not takes_any]
    if len(unknown) == 1:
        raise DagDefinitionError(f"{func}() got an unexpected keyword argument {unknown[0]!r}")
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise DagDefinitionError(f"{func}() got unexpected keyword arguments {names}")
    if func != "expand":
        return
    for name, value in kwargs.items():
        if not _is_mappable(value):
            raise DagDefinitionError(
                f"expand() got an unexpected type {type(value).__name__!r} for keyword "
                f"argument {name!r}"
            )


def prevent_duplicates(given: dict[str, Any], new: dict[str, Any], reason: str) -> None:
    """Airflow's ``prevent_duplicates``: an argument given twice is a DAG error."""
    dups = sorted(set(given) & set(new))
    if len(dups) == 1:
        raise DagDefinitionError(f"{reason} argument: {dups[0]}")
    if dups:
        raise DagDefinitionError(f"{reason} arguments: {', '.join(dups)}")


def create_mapped_group(factory: TaskGroupFactory, kind: str, value: Any, keys: list[str]) -> Any:
    """Build the group: call the function with the partial arguments and a MappedArgument
    for each of ``keys``; return what the function returned, or the group."""
    group = MappedTaskGroup(
        expand_kind=kind, expand_value=value, add_suffix_on_collision=True, **factory.tg_kwargs
    )
    with group:
        if factory.function.__doc__ and not group.tooltip:
            group.tooltip = factory.function.__doc__
        mapped = {key: MappedArgument(group, key) for key in keys}
        retval = factory.function(**factory.partial_kwargs, **mapped)
    return group if retval is None else retval


def expand(factory: TaskGroupFactory, kwargs: dict[str, Any]) -> Any:
    if not kwargs:
        raise DagDefinitionError("no arguments to expand against")
    check_arg_names(factory, "expand", kwargs)
    prevent_duplicates(factory.partial_kwargs, kwargs, "mapping already partial")
    return create_mapped_group(factory, DICT_OF_LISTS, dict(kwargs), list(kwargs))


def expand_kwargs(factory: TaskGroupFactory, kwargs: Any) -> Any:
    if isinstance(kwargs, list):
        for item in kwargs:
            if not isinstance(item, XComArg | dict) or isinstance(item, DagParam):
                raise DagDefinitionError(
                    f"expected XComArg or list[dict], not {type(kwargs).__name__}"
                )
    elif not isinstance(kwargs, XComArg) or isinstance(kwargs, DagParam):
        raise DagDefinitionError(f"expected XComArg or list[dict], not {type(kwargs).__name__}")
    params = inspect.signature(factory.function).parameters
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
        raise DagDefinitionError(
            "calling expand_kwargs() on task group function with * or ** is not supported"
        )
    keys = [name for name in params if name not in factory.partial_kwargs]
    return create_mapped_group(factory, LIST_OF_DICTS, kwargs, keys)


# ----- what the scheduler and the try ask -------------------------------------------


def closest_mapped_group(task: BaseTask) -> MappedTaskGroup | None:
    """The innermost mapped task group ``task`` is in (Airflow's
    ``get_closest_mapped_task_group``), or None."""
    group = task.task_group
    while group is not None:
        if isinstance(group, MappedTaskGroup):
            return group
        group = group.parent_group
    return None


def same_group_map_index(task: BaseTask, upstream_id: str, map_index: int) -> int | None:
    """``map_index`` when ``upstream_id`` is a task of ``task``'s mapped group (its value
    for this instance is the one of the same index), else None (the whole value)."""
    group = closest_mapped_group(task)
    if group is None or map_index < 0 or task.dag is None:
        return None
    upstream = task.dag.tasks.get(upstream_id)
    if upstream is None or closest_mapped_group(upstream) is not group:
        return None
    return map_index


def group_dependants(task: BaseTask) -> list[str]:
    """The mapped task groups that map over ``task``'s return value."""
    dag = task.dag
    if dag is None:
        return []
    return sorted(
        str(g.group_id)
        for g in dag.task_group.iter_groups()
        if isinstance(g, MappedTaskGroup)
        and any(ref.operator is task for ref in find_xcom_args(g.expand_value))
    )
