"""The DAG: its arguments, its tasks, the ``with DAG(...)`` block and ``@dag``.

Cheap checks (argument types, dates, duplicate task ids) run when the DAG is
built; the ones that need the whole graph or heavier libraries (cycles, cron
syntax, param schemas) run in :meth:`DAG.validate`, which serialization calls,
so the task-try process does not pay for them.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ketch.authoring import _defaults
from ketch.exceptions import DagDefinitionError

if TYPE_CHECKING:
    from ketch.authoring.params import Param
    from ketch.authoring.tasks import BaseTask

_context_stack: list[DAG] = []
# Set by the loader while it imports a file: every DAG completed meanwhile lands here.
_collector: list[list[DAG]] = []


def current_dag() -> DAG | None:
    """The DAG of the innermost ``with DAG(...)`` block or running ``@dag`` function."""
    return _context_stack[-1] if _context_stack else None


@contextmanager
def collecting_dags() -> Iterator[list[DAG]]:
    """Collect the DAGs completed while the block runs (Airflow 3's auto-register)."""
    found: list[DAG] = []
    _collector.append(found)
    try:
        yield found
    finally:
        _collector.remove(found)


def _register(dag: DAG) -> None:
    if _collector and dag not in _collector[-1]:
        _collector[-1].append(dag)


def _aware(name: str, value: Any) -> datetime | None:
    """Naive datetimes are UTC (Airflow's default_timezone = utc)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise DagDefinitionError(f"{name} must be a datetime, not {value!r}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _caller_file() -> str:
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("ketch.authoring"):
        frame = frame.f_back  # type: ignore[assignment]
    return frame.f_code.co_filename if frame is not None else ""


class DAG:
    """A set of tasks and their dependencies, with a schedule (Airflow's DAG arguments)."""

    def __init__(
        self,
        dag_id: str,
        *,
        schedule: str | timedelta | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        catchup: bool | None = None,
        max_active_runs: int | None = None,
        max_active_tasks: int | None = None,
        default_args: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: list[str] | tuple[str, ...] | set[str] | None = None,
        description: str | None = None,
        doc_md: str | None = None,
        dagrun_timeout: timedelta | float | None = None,
        is_paused_upon_creation: bool | None = None,
    ) -> None:
        if not isinstance(dag_id, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,250}", dag_id):
            raise DagDefinitionError(
                f"invalid dag_id {dag_id!r}: use letters, digits, dashes, dots and underscores"
            )
        self.dag_id = dag_id
        self.default_args = dict(default_args or {})
        self.start_date = _aware(f"DAG {dag_id!r}: start_date", start_date)
        self.end_date = _aware(f"DAG {dag_id!r}: end_date", end_date)
        self._check_dates()
        self.schedule = self._check_schedule(schedule)
        self._catchup = catchup
        self._max_active_runs = max_active_runs
        self._max_active_tasks = max_active_tasks
        self.params: dict[str, Param] = self._convert_params(params)
        self.tags = sorted(set(tags or []))
        self.description = description
        self.doc_md = doc_md
        self.dagrun_timeout = self._seconds("dagrun_timeout", dagrun_timeout)
        self.is_paused_upon_creation = is_paused_upon_creation
        self.tasks: dict[str, BaseTask] = {}
        self.fileloc = _caller_file()

    # ----- argument checks --------------------------------------------------

    def _check_dates(self) -> None:
        start = self.start_date or self.default_args.get("start_date")
        if self.start_date is None and start is not None:
            self.start_date = _aware(f"DAG {self.dag_id!r}: default_args start_date", start)
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: end_date {self.end_date} is before start_date {self.start_date}"
            )

    def _check_schedule(self, schedule: Any) -> str | timedelta | None:
        if schedule is None or isinstance(schedule, timedelta):
            if isinstance(schedule, timedelta) and schedule <= timedelta(0):
                raise DagDefinitionError(
                    f"DAG {self.dag_id!r}: schedule interval must be positive, not {schedule!r}"
                )
            return schedule
        if isinstance(schedule, str):
            if schedule == "@continuous":
                raise DagDefinitionError(
                    f"DAG {self.dag_id!r}: schedule '@continuous' is not supported by ketch"
                )
            return schedule
        raise DagDefinitionError(
            f"DAG {self.dag_id!r}: schedule must be a cron string, a preset, a timedelta or None, "
            f"not {schedule!r}"
        )

    def _seconds(self, name: str, value: Any) -> float | None:
        from ketch.authoring.tasks import _seconds

        return _seconds(f"DAG {self.dag_id!r}: {name}", value)

    def _convert_params(self, params: dict[str, Any] | None) -> dict[str, Param]:
        from ketch.authoring.params import Param

        merged = {**self.default_args.pop("params", {}), **(params or {})}
        return {k: v if isinstance(v, Param) else Param(v) for k, v in merged.items()}

    # ----- settings-derived values ------------------------------------------

    @property
    def catchup(self) -> bool:
        if self._catchup is None:
            return bool(_defaults.default("catchup_by_default"))
        return bool(self._catchup)

    @property
    def max_active_runs(self) -> int:
        value = self._max_active_runs
        return int(_defaults.default("max_active_runs_per_dag") if value is None else value)

    @property
    def max_active_tasks(self) -> int:
        value = self._max_active_tasks
        return int(_defaults.default("max_active_tasks_per_dag") if value is None else value)

    @property
    def timezone(self) -> str:
        """IANA name the cron schedule is evaluated in: the start_date's zone, else UTC."""
        from zoneinfo import ZoneInfo

        tz = self.start_date.tzinfo if self.start_date else None
        return tz.key if isinstance(tz, ZoneInfo) and tz.key else "UTC"

    # ----- tasks -------------------------------------------------------------

    def add_task(self, task: BaseTask) -> None:
        existing = self.tasks.get(task.task_id)
        if existing is task:
            return
        if existing is not None:
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: duplicate task_id {task.task_id!r} (task ids must be unique)"
            )
        self.tasks[task.task_id] = task
        task.dag = self

    def get_task(self, task_id: str) -> BaseTask:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise KeyError(f"task {task_id!r} not found in DAG {self.dag_id!r}") from None

    @property
    def task_ids(self) -> list[str]:
        return list(self.tasks)

    # ----- whole-graph validation ---------------------------------------------

    def validate(self) -> None:
        """The checks that need the whole graph or heavier libraries (called at parse time)."""
        self._check_edges()
        cycle = self.find_cycle()
        if cycle:
            raise DagDefinitionError(f"DAG {self.dag_id!r} has a cycle: {' >> '.join(cycle)}")
        self._check_params()

    def _check_edges(self) -> None:
        for t in self.tasks.values():
            unknown = (t.upstream_task_ids | t.downstream_task_ids) - set(self.tasks)
            if unknown:
                raise DagDefinitionError(
                    f"DAG {self.dag_id!r}: task {t.task_id!r} depends on unknown task(s) {sorted(unknown)}"
                )

    def find_cycle(self) -> list[str] | None:
        """A cycle as a list of task ids (first repeated at the end), or None."""
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        path: list[str] = []

        def visit(tid: str) -> list[str] | None:
            state[tid] = 1
            path.append(tid)
            for down in sorted(self.tasks[tid].downstream_task_ids):
                if state.get(down) == 1:
                    return [*path[path.index(down) :], down]
                if down not in state and (found := visit(down)):
                    return found
            path.pop()
            state[tid] = 2
            return None

        for tid in self.tasks:
            if tid not in state and (found := visit(tid)):
                return found
        return None

    def _check_params(self) -> None:
        from ketch.authoring.params import check_param_defaults

        check_param_defaults(self.params, scheduled=self.schedule is not None, dag_id=self.dag_id)

    # ----- context manager -----------------------------------------------------

    def __enter__(self) -> DAG:
        _context_stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _context_stack.pop()
        if exc[0] is None:
            _register(self)

    def __repr__(self) -> str:
        return f"<DAG {self.dag_id}>"


def dag(dag_id: str | Callable[..., Any] | None = None, **dag_kwargs: Any) -> Any:
    """``@dag`` / ``@dag(...)``: calling the decorated function builds and returns the DAG."""
    if callable(dag_id):
        return _DagFactory(dag_id, None, dag_kwargs)
    return lambda func: _DagFactory(func, dag_id, dag_kwargs)


class _DagFactory:
    def __init__(self, func: Callable[..., Any], dag_id: str | None, kwargs: dict[str, Any]):
        functools.update_wrapper(self, func)
        self.function = func
        self.dag_id = dag_id or func.__name__
        self.kwargs = kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> DAG:
        the_dag = DAG(self.dag_id, **self.kwargs)
        the_dag.fileloc = self.function.__code__.co_filename
        if the_dag.doc_md is None and self.function.__doc__:
            the_dag.doc_md = self.function.__doc__
        with the_dag:
            self.function(*args, **kwargs)
        return the_dag
