"""XComArg and DagParam: references to values known only in the try, and their resolution.

Its own module because these references are what a task's arguments carry (an
upstream task's value, ``map``/``zip``/``concat`` of them, a ``@dag`` function's param)
and what the mapping, templating and worker code walk (``find_xcom_args``) and resolve
(``resolve_xcom_args``), without needing the task base class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ketch.authoring.dependencies import DependencyMixin
from ketch.authoring.params import NOTSET

if TYPE_CHECKING:
    from ketch.authoring.context import Context
    from ketch.authoring.dag import DAG
    from ketch.authoring.tasks import BaseTask

XComPull = Callable[[str, str], Any]


class XComArg(DependencyMixin):
    """The future return value of a task: pass it to another task to link and feed it."""

    def __init__(self, operator: BaseTask, key: str = "return_value") -> None:
        self.operator = operator
        self.key = key

    @property
    def roots(self) -> list[BaseTask]:
        return [self.operator]

    @property
    def leaves(self) -> list[BaseTask]:
        return [self.operator]

    def resolve(self, xcom_pull: XComPull) -> Any:
        return xcom_pull(self.operator.task_id, self.key)

    def references(self) -> list[XComArg]:
        """The upstream values this one reads: a task taking it is linked to their tasks."""
        return self.plain_args()

    def __getitem__(self, key: str) -> XComArg:
        """``output["key"]``: the XCom ``key`` of the same task (Airflow's PlainXComArg),
        e.g. one key of a ``multiple_outputs`` task's dict."""
        if not isinstance(key, str):
            raise ValueError(f"XComArg only supports str lookup, received {type(key).__name__}")
        return XComArg(self.operator, key)

    def __iter__(self) -> Any:
        # Airflow refuses too: without it, ``a, b = task()`` would loop on __getitem__.
        raise TypeError("'XComArg' object is not iterable")

    def plain_args(self) -> list[XComArg]:
        """The plain (task, key) references this value reads: itself here; every source
        of a ``map``/``zip``/``concat`` (:mod:`ketch.authoring.xcom_arg_ops`)."""
        return [self]

    def _return_value_only(self, message: str) -> None:
        """Airflow's PlainXComArg checks: only a task's return value is mapped over."""
        if isinstance(self, DagParam):
            raise ValueError(f"cannot map over the DAG param {self.name!r} (not supported)")
        if self.key != "return_value":
            raise ValueError(message)

    def map(self, f: Callable[[Any], Any]) -> XComArg:
        """Airflow's ``XComArg.map``: each element through ``f``, in the consuming try."""
        from ketch.authoring.xcom_arg_ops import MapXComArg

        self._return_value_only("cannot map against non-return XCom")
        return MapXComArg(self, [f])

    def zip(self, *others: XComArg, fillvalue: Any = NOTSET) -> XComArg:
        """Airflow's ``XComArg.zip``: tuples of the values' elements."""
        from ketch.authoring.xcom_arg_ops import ZipXComArg

        self._return_value_only("cannot map against non-return XCom")
        return ZipXComArg([self, *others], fillvalue=fillvalue)

    def concat(self, *others: XComArg) -> XComArg:
        """Airflow's ``XComArg.concat``: the values' elements one after the other."""
        from ketch.authoring.xcom_arg_ops import ConcatXComArg

        self._return_value_only("cannot concatenate non-return XCom")
        return ConcatXComArg([self, *others])

    def __repr__(self) -> str:
        return f"XComArg({self.operator.task_id!r}, {self.key!r})"


class DagParam(XComArg):
    """An argument of a ``@dag`` function: the run's value of the DAG param of that name.

    Airflow's ``DagParam``: passed on to a task (``op_args``/``op_kwargs``), it resolves in
    the try to the run's ``conf`` value, else the function's default, else the param's value.
    It resolves wherever an upstream value does (it is an XComArg without an upstream task,
    so it links nothing).
    """

    def __init__(self, dag: DAG, name: str, default: Any = NOTSET) -> None:
        if default is not NOTSET:
            dag.set_param(name, default)
        self.dag = dag
        self.name = name
        self.default = default
        self.key = name

    @property
    def roots(self) -> list[BaseTask]:
        return []

    @property
    def leaves(self) -> list[BaseTask]:
        return []

    def references(self) -> list[XComArg]:
        return []  # a param comes from no task

    def __getitem__(self, key: str) -> XComArg:
        # A param has no XComs of other keys (Airflow's DagParam is not subscriptable).
        raise TypeError(f"DAG param {self.name!r} cannot be subscripted")

    def resolve(self, xcom_pull: XComPull | None = None) -> Any:
        from ketch.authoring.context import get_current_context

        return self.resolve_in(get_current_context())

    def resolve_in(self, context: Context) -> Any:
        conf = getattr(context.get("dag_run"), "conf", None) or {}
        if self.name in conf:
            return conf[self.name]
        if self.default is not NOTSET:
            return self.default
        params = context.get("params") or {}
        if self.name in params:
            return params[self.name]
        raise KeyError(f"no value could be resolved for parameter {self.name!r}")

    def __repr__(self) -> str:
        return f"DagParam({self.name!r})"


def find_xcom_args(value: Any) -> list[XComArg]:
    """Every XComArg inside ``value`` (nested lists, tuples, sets, dicts) that reads a
    task's value: a :class:`DagParam` reads none, a ``map``/``zip``/``concat`` reads its
    sources, a mapped task group's argument reads the group's expand input (see
    ``XComArg.references``)."""
    if isinstance(value, XComArg):
        return value.references()
    if isinstance(value, dict):
        return [x for item in value.values() for x in find_xcom_args(item)]
    if isinstance(value, list | tuple | set | frozenset):
        return [x for item in value for x in find_xcom_args(item)]
    return []


def resolve_xcom_args(value: Any, xcom_pull: XComPull) -> Any:
    """``value`` with every XComArg replaced by the upstream task's value (and every
    :class:`DagParam` by the run's value of that param)."""
    if isinstance(value, XComArg):
        return value.resolve(xcom_pull)
    if isinstance(value, dict):
        return {k: resolve_xcom_args(v, xcom_pull) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(resolve_xcom_args(v, xcom_pull) for v in value)
    return value
