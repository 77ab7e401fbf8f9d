"""``@task``, ``@task.branch``, ``@task.short_circuit``, ``@task.bash``: functions that become tasks when called.

Calling a decorated function inside a DAG creates the task and returns an
:class:`XComArg`; passing that XComArg (also inside lists and dicts) to another
decorated call links the two tasks and feeds the value at run time. Calling
the same function twice gives ids ``name``, ``name__1``, ... as in Airflow.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

from ketch.authoring import _context
from ketch.authoring._args import DOC_ATTRS
from ketch.authoring.bash import BashDecoratedTask
from ketch.authoring.mapped import INTO_OP_KWARGS, PartialTask
from ketch.authoring.python import BranchPythonTask, PythonTask, infer_multiple_outputs
from ketch.authoring.short_circuit import ShortCircuitTask
from ketch.authoring.tasks import BaseTask
from ketch.authoring.xcom_args import XComArg, find_xcom_args

if TYPE_CHECKING:
    from ketch.authoring.taskgroup import TaskGroup


def unique_task_id(
    task_id: str, existing: dict[str, BaseTask] | None, group: TaskGroup | None = None
) -> str:
    """``task_id`` if free in the DAG, else ``core__N`` with N one above the highest in use.

    Inside a task group the check is on the prefixed id (Airflow's ``get_unique_task_id``);
    the id returned is still unprefixed (the task prefixes it when it is created).
    """
    full = group.child_id(task_id) if group is not None else task_id
    if not existing or full not in existing:
        return task_id
    core = re.split(r"__\d+$", task_id)[0]
    full_core = re.split(r"__\d+$", full)[0]
    suffixes = [
        int(m.group(1))
        for other in existing
        if (m := re.fullmatch(rf"{re.escape(full_core)}__(\d+)", other))
    ]
    return f"{core}__{max(suffixes, default=0) + 1}"


class DecoratedTask:
    """The object ``@task`` returns: call it to add a task to the current DAG."""

    def __init__(
        self, func: Callable[..., Any], task_class: type[BaseTask], kwargs: dict[str, Any]
    ) -> None:
        functools.update_wrapper(self, func)
        self.function = func
        self.task_class = task_class
        self.kwargs = kwargs

    def override(self, **kwargs: Any) -> DecoratedTask:
        return DecoratedTask(self.function, self.task_class, {**self.kwargs, **kwargs})

    def _placed_task_id(self, options: dict[str, Any]) -> str:
        """The task id for a new call (``name__N`` when taken); pops ``task_id``."""
        group = options.get("task_group")
        dag = options.get("dag") or (group.dag if group else None) or _context.current_dag()
        if group is None:
            group = _context.current_group(dag)
        wanted = options.pop("task_id", None) or self.function.__name__
        if self.task_class in (PythonTask, BranchPythonTask) and "multiple_outputs" not in options:
            # Airflow's decorator infers it from a Mapping return annotation.
            options["multiple_outputs"] = infer_multiple_outputs(self.function)
        return unique_task_id(wanted, dag.tasks if dag else None, group)

    def partial(self, **kwargs: Any) -> PartialTask:
        """Airflow's ``fn.partial(x=1)``: function arguments every mapped instance shares
        (task arguments go through ``.override(...)``)."""
        options = dict(self.kwargs)
        task_id = self._placed_task_id(options)
        options.update(python_callable=self.function, op_kwargs=kwargs)
        return PartialTask(self.task_class, task_id, options, INTO_OP_KWARGS)

    def expand(self, **mapped: Any) -> XComArg:
        """Airflow's ``fn.expand(x=[1, 2, 3])``: one task instance per element."""
        return self.partial().expand(**mapped)

    def expand_kwargs(self, kwargs: Any) -> XComArg:
        """Airflow's ``fn.expand_kwargs([{"x": 1}, {"x": 2}])``: one instance per dict."""
        return self.partial().expand_kwargs(kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> XComArg:
        options = dict(self.kwargs)
        task_id = self._placed_task_id(options)
        task = self.task_class(
            task_id, python_callable=self.function, op_args=args, op_kwargs=kwargs, **options
        )
        # Airflow: the docstring documents the task unless a doc* argument was given.
        if self.function.__doc__ and not any(getattr(task, a, None) for a in DOC_ATTRS):
            task.doc_md = self.function.__doc__
        for arg in find_xcom_args((args, kwargs)):
            arg.operator.set_downstream(task)
        return XComArg(task)


def _decorator(
    task_class: type[BaseTask], func: Callable[..., Any] | None, kwargs: dict[str, Any]
) -> Any:
    if func is not None:
        return DecoratedTask(func, task_class, kwargs)
    return lambda f: DecoratedTask(f, task_class, kwargs)


class TaskDecoratorFactory:
    """``task`` itself: ``@task``, ``@task(...)``, ``.python``, ``.branch``, ``.short_circuit``, ``.bash``."""

    @overload
    def __call__(self, python_callable: Callable[..., Any]) -> DecoratedTask: ...
    @overload
    def __call__(
        self, python_callable: None = None, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], DecoratedTask]: ...

    def __call__(self, python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        return _decorator(PythonTask, python_callable, kwargs)

    def python(self, python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        return _decorator(PythonTask, python_callable, kwargs)

    def branch(self, python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        return _decorator(BranchPythonTask, python_callable, kwargs)

    def short_circuit(
        self, python_callable: Callable[..., Any] | None = None, **kwargs: Any
    ) -> Any:
        """Airflow's ``@task.short_circuit`` (takes ``ignore_downstream_trigger_rules``)."""
        return _decorator(ShortCircuitTask, python_callable, kwargs)

    def bash(self, python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        return _decorator(BashDecoratedTask, python_callable, kwargs)

    def sensor(self, python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        """Airflow's ``@task.sensor``: the function is the poke (``poke_interval``,
        ``timeout``, ``mode``, ``soft_fail``, ``exponential_backoff``...)."""
        from ketch.authoring.sensors import PythonSensor

        return _decorator(PythonSensor, python_callable, kwargs)


task = TaskDecoratorFactory()
