"""Tasks that call a Python function: ``@task`` and ``@task.branch``.

Context injection follows Airflow: a parameter named like a context key
(``params``, ``logical_date``, ``ti``...) receives that value unless the caller
passed it (``None`` for a date key of a run without a logical date), and a ``**kwargs``/``**context`` parameter receives the whole context.

``templates_dict``, ``op_args`` and ``op_kwargs`` are templated (Airflow's
PythonOperator): rendered with the try's context just before the call; the rendered
``templates_dict`` is the context's ``templates_dict`` (a parameter of that name receives
it). ``templates_exts`` (e.g. ``[".sql"]``) makes strings ending so template files.

``multiple_outputs`` (Airflow's): a returned dict is stored whole as ``return_value`` and
each of its keys as an XCom of its own, which a downstream task reads as ``output["key"]``.
``@task`` infers it from a ``Mapping`` return annotation (``-> dict[str, int]``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ketch.authoring.context import DATE_KEYS
from ketch.authoring.tasks import BaseTask, TaskResult
from ketch.authoring.xcom_args import XComPull

if TYPE_CHECKING:
    from ketch.authoring.context import Context


def context_kwargs(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], context: Context
) -> dict[str, Any]:
    """The keyword arguments to call ``func`` with: ``kwargs`` plus the context it asks for."""
    sig = inspect.signature(func)
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        extra = {k: v for k, v in context.items() if k not in kwargs}
        positional = _bound_positional(sig, args)
        return {**{k: v for k, v in extra.items() if k not in positional}, **kwargs}
    positional = _bound_positional(sig, args)
    out = dict(kwargs)
    for name, p in params.items():
        if name in out or name in positional:
            continue
        if p.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            continue
        if name in context:
            out[name] = context[name]
        elif name in DATE_KEYS and p.default is inspect.Parameter.empty:
            # A run without a logical date has no such key; Airflow's decorator gives
            # context-key parameters a None default, so the function receives None.
            out[name] = None
    return out


def _bound_positional(sig: inspect.Signature, args: tuple[Any, ...]) -> set[str]:
    names = [
        n
        for n, p in sig.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return set(names[: len(args)])


def infer_multiple_outputs(func: Callable[..., Any]) -> bool:
    """Airflow's ``_infer_multiple_outputs``: True when ``func`` is annotated to return a
    Mapping (``dict``, ``dict[str, int]``, ``typing.Dict``...); False when it has no such
    annotation or it cannot be evaluated."""
    annotations = getattr(func, "__annotations__", {})
    if "return" not in annotations:
        return False

    def fake() -> None: ...

    fake.__annotations__ = {"return": annotations["return"]}
    try:
        return_type = typing.get_type_hints(fake, getattr(func, "__globals__", {})).get("return")
    except (NameError, TypeError):
        return False
    origin = getattr(return_type, "__origin__", return_type)
    return isinstance(origin, type) and issubclass(origin, Mapping)


def output_xcoms(task_id: str, value: Any) -> dict[str, Any] | None:
    """The XComs a ``multiple_outputs`` task stores besides its return value: one per key of
    the returned dict (none for ``None``, as Airflow pushes nothing then); a non-dict or a
    non-string key fails the try with Airflow's message."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(
            f"task {task_id!r}: returned output was type {type(value)} "
            "expected dictionary for multiple_outputs"
        )
    for key in value:
        if not isinstance(key, str):
            raise TypeError(
                "Returned dictionary keys must be strings when using "
                f"multiple_outputs, found {key} ({type(key)}) instead"
            )
    return dict(value)


class PythonTask(BaseTask):
    """Calls ``python_callable(*op_args, **op_kwargs)``; its return value is the task's XCom."""

    kind = "python"
    template_fields: tuple[str, ...] = ("templates_dict", "op_args", "op_kwargs")
    template_ext: tuple[str, ...] = ()

    def __init__(
        self,
        task_id: str,
        python_callable: Callable[..., Any],
        *,
        op_args: tuple[Any, ...] | list[Any] = (),
        op_kwargs: dict[str, Any] | None = None,
        templates_dict: dict[str, Any] | None = None,
        templates_exts: list[str] | tuple[str, ...] | None = None,
        multiple_outputs: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_id, **kwargs)
        self.multiple_outputs = bool(multiple_outputs)
        if not callable(python_callable):
            raise TypeError(f"task {task_id!r}: python_callable must be callable")
        self.python_callable = python_callable
        self.op_args = tuple(op_args)
        self.op_kwargs = dict(op_kwargs or {})
        self.templates_dict = templates_dict
        if templates_exts:
            self.template_ext = tuple(templates_exts)

    def call(self, context: Context, xcom_pull: XComPull) -> Any:
        args, kwargs = self.prepare_call(context, xcom_pull)
        return self.python_callable(*args, **kwargs)

    def prepare_call(
        self, context: Context, xcom_pull: XComPull
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The callable's arguments: templated fields rendered (and reported) once, upstream
        values resolved, the context it asks for injected. A sensor calls it once per try
        and the callable once per poke."""
        from ketch.authoring.templating import render_fields, report_rendered

        fields = {
            "templates_dict": self.templates_dict,
            "op_args": self.op_args,
            "op_kwargs": self.op_kwargs,
        }
        rendered = render_fields(self, context, fields, xcom_pull=xcom_pull)
        if self.templates_dict is not None or self.op_args or self.op_kwargs:
            report_rendered(rendered)
        context["templates_dict"] = rendered["templates_dict"]
        args = tuple(rendered["op_args"])
        kwargs = context_kwargs(self.python_callable, args, dict(rendered["op_kwargs"]), context)
        return args, kwargs

    def _run(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        return self._result(self.call(context, xcom_pull))

    def _result(self, value: Any, follow: list[str] | None = None) -> TaskResult:
        xcoms = output_xcoms(self.task_id, value) if self.multiple_outputs else None
        return TaskResult(return_value=value, follow_task_ids=follow, xcoms=xcoms)


class BranchPythonTask(PythonTask):
    """The callable returns the task id (or ids) to follow; other direct downstreams are skipped.

    Like Airflow 3's ``SkipMixin.skip_all_except``, any task of the DAG may be returned, not
    only a direct downstream one: the scheduler keeps the chosen tasks and all their
    descendants and skips the direct downstream tasks outside that set; what happens to tasks
    further away (including a chosen task that is not a direct downstream) is left to the
    usual skip propagation of trigger rules. An id that is not a task of the DAG fails the try.

    Task groups as in Airflow's ``BranchMixIn``: a returned task group id stands for the
    group's root tasks, and an id relative to the branch task's own group (``"b"`` for
    ``"group.b"``) is resolved when no task or group has that id itself.
    """

    kind = "branch"

    def _run(self, context: Context, xcom_pull: XComPull) -> TaskResult:
        chosen = self.call(context, xcom_pull)
        return self._result(chosen, self.follow_ids(chosen))

    def follow_ids(self, chosen: Any) -> list[str]:
        if chosen is None:
            return []
        try:
            ids = [chosen] if isinstance(chosen, str) else list(chosen)
        except TypeError:
            ids = [chosen]
        if not all(isinstance(i, str) for i in ids):
            raise TypeError(
                f"branch task {self.task_id!r} must return a task id, a list of task ids or None, "
                f"not {chosen!r}"
            )
        if self.dag is not None:
            ids = self._expand_task_groups(ids)
        known = set(self.dag.tasks) if self.dag is not None else self.downstream_task_ids
        invalid = sorted(set(ids) - known)
        if invalid:
            where = f"DAG {self.dag.dag_id!r}" if self.dag is not None else "its DAG"
            raise ValueError(
                f"branch task {self.task_id!r} returned {invalid}, which are not tasks of {where}"
            )
        return ids

    def _expand_task_groups(self, ids: list[str]) -> list[str]:
        assert self.dag is not None
        groups = self.dag.task_group_dict
        out: list[str] = []
        for branch in ids:
            resolved = branch
            group = self.task_group
            relative = (
                branch not in groups
                and branch not in self.dag.tasks
                and group is not None
                and group.group_id
                and group.prefix_group_id
            )
            if relative and group is not None:
                candidate = f"{group.group_id}.{branch}"
                if candidate in groups or candidate in self.dag.tasks:
                    resolved = candidate
            if resolved in groups:
                out.extend(t.task_id for t in groups[resolved].roots)
            else:
                out.append(resolved)
        return out
