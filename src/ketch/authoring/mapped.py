"""Dynamic task mapping: ``.partial(...).expand(...)`` and ``.expand_kwargs(...)``.

Airflow's ``MappedOperator`` and ``ExpandInput``: a mapped task is one node of the DAG
whose task instances are created at run time, one per element of what it maps over (a
literal list or dict, or an upstream task's return value). Several expanded keyword
arguments give their cross product, the last one varying fastest (Airflow's
``DictOfListsExpandInput._find_index_for_this_field``); mapping over a dict gives
``(key, value)`` tuples.

The DAG processor stores only the *shape* of the expansion (each argument's literal
length or the upstream task it comes from, see :class:`ketch.serialization.SerializedExpand`);
the scheduler computes the number of instances from it and the upstream values in the
database. The try of instance ``map_index`` imports the DAG file, resolves the mapped
arguments here and runs an ordinary task built from them (:meth:`MappedTask.unmap`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ketch.authoring import _context
from ketch.authoring.task_args import TASK_ARGS
from ketch.authoring.tasks import BaseTask, TaskResult
from ketch.authoring.xcom_args import (
    DagParam,
    XComArg,
    XComPull,
    find_xcom_args,
    resolve_xcom_args,
)
from ketch.exceptions import DagDefinitionError

if TYPE_CHECKING:
    from ketch.authoring.context import Context
    from ketch.serialization import SerializedExpand

# Where mapped values go: constructor keyword arguments (classic operators) or the
# function's keyword arguments (``@task``: the ``op_kwargs`` of its PythonTask).
INTO_KWARGS = "kwargs"
INTO_OP_KWARGS = "op_kwargs"
DICT_OF_LISTS = "dict_of_lists"
LIST_OF_DICTS = "list_of_dicts"


def is_mappable_value(value: Any) -> bool:
    """What Airflow maps over: a list (any sequence but a string) or a dict."""
    if isinstance(value, str | bytes):
        return False
    return isinstance(value, Sequence | dict)


def _check_literal(task_id: str, name: str, value: Any) -> None:
    if isinstance(value, DagParam):
        raise DagDefinitionError(
            f"task {task_id!r}: cannot map over the DAG param {value.name!r} (not supported)"
        )
    if isinstance(value, XComArg | list | dict):
        return
    raise DagDefinitionError(
        f"task {task_id!r}: expand() got an unexpected type {type(value).__name__!r} for "
        f"keyword argument {name!r}; map over a list, a dict or an upstream task's value"
    )


def element(value: Any, index: int) -> Any:
    """Element ``index`` of a mapped value: a list's item, a dict's ``(key, value)``."""
    if isinstance(value, dict):
        key = next(itertools.islice(value, index, None))
        return key, value[key]
    return value[index]


def product_index(lengths: list[int], map_index: int) -> list[int]:
    """Each argument's index for ``map_index`` of their cross product (last fastest)."""
    out = [0] * len(lengths)
    for i in range(len(lengths) - 1, -1, -1):
        out[i] = map_index % lengths[i]
        map_index //= lengths[i]
    return out


def serialize_expand_input(kind: str, value: Any) -> SerializedExpand:
    """The shape of an expand input (a mapped task's or a mapped task group's)."""
    from ketch.authoring.xcom_arg_ops import serialize_source
    from ketch.serialization import SerializedExpand, SerializedExpandArg

    def arg(name: str | None, value: Any) -> SerializedExpandArg:
        if isinstance(value, XComArg):
            return serialize_source(value, name)
        return SerializedExpandArg(name=name, length=len(value))

    if kind == DICT_OF_LISTS:
        args = [arg(name, item) for name, item in value.items()]
    else:
        args = [arg(None, value)]
    return SerializedExpand.model_validate({"kind": kind, "args": args})


def expand_input_kwargs(
    owner: str, kind: str, value: Any, map_index: int, xcom_pull: XComPull
) -> dict[str, Any]:
    """Instance ``map_index``'s keyword arguments of an expand input (``owner`` names the
    mapped task or group in messages: "task 'x'"), upstream values resolved."""
    if kind == LIST_OF_DICTS:
        items = resolve_xcom_args(value, xcom_pull)
        chosen = element(items, map_index)
        if not isinstance(chosen, dict):
            raise TypeError(
                f"expand_kwargs() of {owner}: item {map_index} is a "
                f"{type(chosen).__name__}, not a dict of keyword arguments"
            )
        return dict(resolve_xcom_args(chosen, xcom_pull))
    values = {name: resolve_xcom_args(item, xcom_pull) for name, item in value.items()}
    for name, item in values.items():
        if not is_mappable_value(item):
            raise TypeError(f"{owner} cannot map over {name}={type(item).__name__!r}")
    indices = product_index([len(v) for v in values.values()], map_index)
    return {name: element(v, i) for (name, v), i in zip(values.items(), indices, strict=True)}


class PartialTask:
    """``Operator.partial(...)`` or ``@task``'s ``fn.partial(...)``: arguments shared by
    every mapped instance, waiting for ``.expand(...)`` or ``.expand_kwargs(...)``."""

    def __init__(
        self,
        operator_class: type[BaseTask],
        task_id: str,
        kwargs: dict[str, Any],
        into: str,
    ) -> None:
        self.operator_class = operator_class
        self.task_id = task_id
        self.kwargs = kwargs
        self.into = into

    def _shared(self) -> dict[str, Any]:
        if self.into == INTO_OP_KWARGS:
            return dict(self.kwargs.get("op_kwargs") or {})
        return self.kwargs

    def expand(self, **mapped: Any) -> XComArg:
        if not mapped:
            raise DagDefinitionError(f"task {self.task_id!r}: no arguments to expand against")
        overlap = sorted(set(mapped) & set(self._shared()))
        if overlap:
            raise DagDefinitionError(
                f"task {self.task_id!r}: argument(s) {', '.join(overlap)} given to both "
                "partial() and expand()"
            )
        for name, value in mapped.items():
            if self.into == INTO_KWARGS and name in TASK_ARGS:
                raise DagDefinitionError(
                    f"task {self.task_id!r}: cannot map over the task argument {name!r}"
                )
            _check_literal(self.task_id, name, value)
        return self._create(DICT_OF_LISTS, mapped)

    def expand_kwargs(self, kwargs: list[dict[str, Any]] | XComArg) -> XComArg:
        if isinstance(kwargs, list):
            for item in kwargs:
                if not isinstance(item, dict | XComArg):
                    raise DagDefinitionError(
                        f"task {self.task_id!r}: expand_kwargs() takes a list of dicts, "
                        f"not a list holding {type(item).__name__!r}"
                    )
        elif isinstance(kwargs, DagParam) or not isinstance(kwargs, XComArg):
            raise DagDefinitionError(
                f"task {self.task_id!r}: expand_kwargs() takes a list of dicts or an "
                f"upstream task's value, not {type(kwargs).__name__!r}"
            )
        return self._create(LIST_OF_DICTS, kwargs)

    def _create(self, kind: str, value: Any) -> XComArg:
        task = MappedTask(
            self.task_id,
            operator_class=self.operator_class,
            partial_kwargs=self.kwargs,
            into=self.into,
            expand_kind=kind,
            expand_value=value,
        )
        for arg in find_xcom_args((self.kwargs, value)):
            arg.operator.set_downstream(task)
        return XComArg(task)


class MappedTask(BaseTask):
    """A task with one instance per mapped element (Airflow's MappedOperator)."""

    def __init__(
        self,
        task_id: str,
        *,
        operator_class: type[BaseTask],
        partial_kwargs: dict[str, Any],
        into: str,
        expand_kind: str,
        expand_value: Any,
    ) -> None:
        task_args = {k: v for k, v in partial_kwargs.items() if k in TASK_ARGS}
        placement = {k: partial_kwargs[k] for k in ("dag", "task_group") if k in partial_kwargs}
        super().__init__(task_id, **placement, **task_args)
        self.kind = operator_class.kind  # type: ignore[misc]
        self.operator_class = operator_class
        self.partial_kwargs = {
            k: v
            for k, v in partial_kwargs.items()
            if k not in TASK_ARGS and k not in ("dag", "task_group")
        }
        self.into = into
        self.expand_kind = expand_kind
        self.expand_value = expand_value

    @property
    def is_mapped(self) -> bool:
        return True

    # ----- the shape the scheduler needs ------------------------------------

    def serialize_expand(self) -> SerializedExpand:
        return serialize_expand_input(self.expand_kind, self.expand_value)

    def mapped_upstream_ids(self) -> set[str]:
        """Tasks whose return value this task maps over."""
        values = (
            self.expand_value.values() if self.expand_kind == DICT_OF_LISTS else [self.expand_value]
        )
        return {
            p.operator.task_id for v in values if isinstance(v, XComArg) for p in v.plain_args()
        }

    # ----- one instance ------------------------------------------------------

    def mapped_kwargs(self, map_index: int, xcom_pull: XComPull) -> dict[str, Any]:
        """The keyword arguments of instance ``map_index``, upstream values resolved."""
        return expand_input_kwargs(
            f"task {self.task_id!r}", self.expand_kind, self.expand_value, map_index, xcom_pull
        )

    def unmap(self, map_index: int, xcom_pull: XComPull) -> BaseTask:
        """The ordinary task instance ``map_index`` runs (not added to the DAG)."""
        mapped = self.mapped_kwargs(map_index, xcom_pull)
        kwargs = dict(self.partial_kwargs)
        if self.into == INTO_OP_KWARGS:
            kwargs["op_kwargs"] = {**(kwargs.get("op_kwargs") or {}), **mapped}
        else:
            kwargs.update(mapped)
        with _context.detached():
            task = self.operator_class(self.task_id, **kwargs, **self._given)
        task.dag = self.dag
        task.task_group = self.task_group
        task.upstream_task_ids = set(self.upstream_task_ids)
        task.downstream_task_ids = set(self.downstream_task_ids)
        return task

    def execute(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        map_index = int(context.get("map_index", -1))
        if map_index < 0:
            raise RuntimeError(f"mapped task {self.task_id!r} run without a map_index")
        return self.unmap(map_index, xcom_pull).execute(context, xcom_pull)


def partial_of(
    operator_class: type[BaseTask], task_id: str | None, kwargs: dict[str, Any]
) -> PartialTask:
    """``Operator.partial(task_id=..., ...)`` for a classic operator."""
    if not task_id:
        raise DagDefinitionError(f"{operator_class.__name__}.partial() needs a task_id")
    return PartialTask(operator_class, task_id, kwargs, INTO_KWARGS)


def mapped_dependants(task: BaseTask) -> list[str]:
    """The mapped tasks and mapped task groups that map over ``task``'s return value."""
    from ketch.authoring.mapped_group import group_dependants

    dag = task.dag
    if dag is None:
        return []
    tasks = sorted(
        t.task_id
        for t in dag.tasks.values()
        if isinstance(t, MappedTask) and task.task_id in t.mapped_upstream_ids()
    )
    return tasks + group_dependants(task)


def push_problem(task: BaseTask, result: TaskResult, max_length: int) -> str | None:
    """Why ``task``'s return value cannot be mapped over by its mapped dependants, or None.

    Airflow's task runner checks this when it pushes the value (``_push_xcom_if_needed``)
    and fails the *pushing* task: ``XComForMappingNotPushed``, ``UnmappableXComTypePushed``
    and ``UnmappableXComLengthPushed``; the same names start ketch's messages.
    """
    if task.is_mapped or not result.push_return_value:
        return None
    dependants = mapped_dependants(task)
    if not dependants:
        return None
    value = result.return_value
    users = ", ".join(repr(d) for d in dependants)
    if value is None:
        return f"XComForMappingNotPushed: did not push XCom for task mapping ({users} map over it)"
    if not is_mappable_value(value):
        return (
            f"UnmappableXComTypePushed: unmappable return type {type(value).__name__!r}: "
            f"{users} map over the return value of {task.task_id!r}, which must be a list "
            "or a dict"
        )
    if len(value) > max_length:
        return (
            f"UnmappableXComLengthPushed: unmappable return value length: {len(value)} > "
            f"{max_length} (max_map_length); {users} map over it"
        )
    return None
