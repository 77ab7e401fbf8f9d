"""The DAG: its arguments, its tasks, the ``with DAG(...)`` block and ``@dag``.

Cheap checks (argument types, dates, duplicate task ids) run when the DAG is
built; the ones that need the whole graph or heavier libraries (cycles, cron
syntax, param schemas) run in :meth:`DAG.validate`, which serialization calls,
so the task-try process does not pay for them.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ketch.authoring import _context, _defaults
from ketch.authoring._args import optional_str, seconds
from ketch.authoring._context import current_dag
from ketch.authoring.params import NOTSET
from ketch.authoring.taskgroup import TaskGroup
from ketch.exceptions import DagDefinitionError

if TYPE_CHECKING:
    from ketch.authoring.params import Param
    from ketch.authoring.tasks import BaseTask
    from ketch.dag_testing import DagTestResult

__all__ = ["DAG", "collecting_dags", "current_dag", "dag"]

# Set by the loader while it imports a file: every DAG completed meanwhile lands here.
_collector: list[list[DAG]] = []

TAG_MAX_LEN = 100  # Airflow's limit on one tag


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
        on_success_callback: Any = None,
        on_failure_callback: Any = None,
        default_args: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: list[str] | tuple[str, ...] | set[str] | None = None,
        description: str | None = None,
        doc_md: str | None = None,
        dagrun_timeout: timedelta | float | None = None,
        is_paused_upon_creation: bool | None = None,
        doc: str | None = None,
        doc_rst: str | None = None,
        doc_json: str | None = None,
        doc_yaml: str | None = None,
        owner_links: dict[str, str] | None = None,
        dag_display_name: str | None = None,
        render_template_as_native_obj: bool = False,
        max_consecutive_failed_dag_runs: int | None = None,
        template_searchpath: str | list[str] | tuple[str, ...] | None = None,
        template_undefined: type | None = None,
        user_defined_macros: dict[str, Any] | None = None,
        user_defined_filters: dict[str, Callable[..., Any]] | None = None,
        jinja_environment_kwargs: dict[str, Any] | None = None,
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
        # Called when a run ends, in a child process the scheduler starts (Airflow 3 runs
        # them in its DAG processor): ketch.scheduler.dag_callbacks.
        self.on_success_callback = on_success_callback
        self.on_failure_callback = on_failure_callback
        self.params: dict[str, Param] = self._convert_params(params)
        self.tags = self._check_tags(tags)
        where = f"DAG {dag_id!r}"
        self.description = optional_str(f"{where}: description", description)
        self.doc_md = _doc_md(optional_str(f"{where}: doc_md", doc_md))
        # Airflow's DAG takes doc_md only; ketch also keeps the other doc kinds operators take.
        self.doc = optional_str(f"{where}: doc", doc)
        self.doc_rst = optional_str(f"{where}: doc_rst", doc_rst)
        self.doc_json = optional_str(f"{where}: doc_json", doc_json)
        self.doc_yaml = optional_str(f"{where}: doc_yaml", doc_yaml)
        self.owner_links = self._check_owner_links(owner_links)
        self._dag_display_name = optional_str(f"{where}: dag_display_name", dag_display_name)
        # Templating (used by ketch.authoring.templating when a try renders its fields);
        # template_undefined None means jinja2.StrictUndefined, as in Airflow.
        self.render_template_as_native_obj = bool(render_template_as_native_obj)
        if isinstance(template_searchpath, str):
            template_searchpath = [template_searchpath]
        self.template_searchpath: list[str] = list(template_searchpath or [])
        self.template_undefined = template_undefined
        self.user_defined_macros = dict(user_defined_macros or {})
        self.user_defined_filters = dict(user_defined_filters or {})
        self.jinja_environment_kwargs = dict(jinja_environment_kwargs or {})
        self._max_consecutive_failed_dag_runs = self._check_max_failed(
            max_consecutive_failed_dag_runs
        )
        self.dagrun_timeout = seconds(f"{where}: dagrun_timeout", dagrun_timeout)
        self.is_paused_upon_creation = is_paused_upon_creation
        self.tasks: dict[str, BaseTask] = {}
        self.task_group = TaskGroup(None, dag=self)  # the root group
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

    def _check_tags(self, tags: Any) -> list[str]:
        if tags is None:
            return []
        if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
            raise DagDefinitionError(f"DAG {self.dag_id!r}: tags must be a list of strings")
        if any(len(t) > TAG_MAX_LEN for t in tags):
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: tag cannot be longer than {TAG_MAX_LEN} characters"
            )
        return sorted(set(tags))

    def _check_owner_links(self, owner_links: Any) -> dict[str, str]:
        """Airflow's check: each owner's link is a URL with a scheme and host, or a mailto:."""
        from urllib.parse import urlsplit

        if owner_links is None:
            return {}
        if not isinstance(owner_links, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in owner_links.items()
        ):
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: owner_links must be a dict of owner name to link"
            )
        wrong = {}
        for owner, link in owner_links.items():
            parts = urlsplit(link)
            if parts.scheme == "mailto":
                if not parts.path:
                    wrong[owner] = link
            elif not parts.scheme or not parts.netloc:
                wrong[owner] = link
        if wrong:
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: wrong link format was used for the owner. Use a valid link. "
                f"Bad formatted links are: {wrong}"
            )
        return dict(owner_links)

    def _check_max_failed(self, value: Any) -> int | None:
        if value is None:
            return None  # [core] max_consecutive_failed_dag_runs_per_dag, read when needed
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: max_consecutive_failed_dag_runs must be an integer >= 0"
            )
        return value

    def param(self, name: str, default: Any = NOTSET) -> Any:
        """Airflow's ``DAG.param``: a reference to the param ``name``, resolved in the try."""
        from ketch.authoring.xcom_args import DagParam

        return DagParam(self, name, default)

    def set_param(self, name: str, value: Any) -> None:
        """Airflow's ``dag.params[name] = value``: a Param replaces, a plain value becomes
        the existing param's value (its schema kept) or a new param."""
        from ketch.authoring.params import Param

        if isinstance(value, Param):
            self.params[name] = value
        elif name in self.params:
            self.params[name].value = value
        else:
            self.params[name] = Param(value)

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
    def max_consecutive_failed_dag_runs(self) -> int:
        """Pause the DAG once this many runs in a row failed (0: never). Unset, the
        setting's value, as Airflow 3's DAG reads it at parse time; an explicit 0 stays 0."""
        value = self._max_consecutive_failed_dag_runs
        if value is None:
            return int(_defaults.parse_defaults().get("max_consecutive_failed_dag_runs_per_dag", 0))
        return value

    @property
    def timezone(self) -> str:
        """IANA name the cron schedule is evaluated in: the start_date's zone, else UTC."""
        from zoneinfo import ZoneInfo

        tz = self.start_date.tzinfo if self.start_date else None
        return tz.key if isinstance(tz, ZoneInfo) and tz.key else "UTC"

    @property
    def dag_display_name(self) -> str:
        return self._dag_display_name or self.dag_id

    @dag_display_name.setter
    def dag_display_name(self, value: str | None) -> None:
        self._dag_display_name = value

    @property
    def owner(self) -> str:
        """Airflow's ``DAG.owner``: the owners of the tasks, comma separated."""
        return ", ".join(self.owners)

    @property
    def owners(self) -> list[str]:
        return sorted({t.owner for t in self.tasks.values()})

    # ----- tasks -------------------------------------------------------------

    def add_task(self, task: BaseTask) -> None:
        existing = self.tasks.get(task.task_id)
        if existing is task:
            return
        if existing is not None:
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: duplicate task_id {task.task_id!r} (task ids must be unique)"
            )
        if task.task_id in self.task_group.used_group_ids:
            raise DagDefinitionError(
                f"DAG {self.dag_id!r}: task_id {task.task_id!r} is already used by a task group"
            )
        group = task.task_group if task.task_group is not None else self.task_group
        group.add(task)
        task.task_group = group
        self.tasks[task.task_id] = task
        task.dag = self
        # As Airflow: a task id is never reused as a group id (nor the other way round).
        self.task_group.used_group_ids.add(task.task_id)

    @property
    def task_group_dict(self) -> dict[str, TaskGroup]:
        """Every task group of the DAG by its full id (the root group excluded)."""
        return {g.group_id: g for g in self.task_group.iter_groups() if g.group_id}

    def has_task_group(self, task_group_id: str) -> bool:
        return task_group_id in self.task_group_dict

    def get_task(self, task_id: str) -> BaseTask:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise KeyError(f"task {task_id!r} not found in DAG {self.dag_id!r}") from None

    @property
    def task_ids(self) -> list[str]:
        return list(self.tasks)

    # ----- running it here -----------------------------------------------------

    def test(
        self, logical_date: datetime | None = None, run_conf: dict[str, Any] | None = None
    ) -> DagTestResult:
        """Airflow's ``dag.test()``: one run with every task in this process, in dependency
        order, their logs printed (see :mod:`ketch.dag_testing`, also for which database).
        Returns the result (``.state``, ``.task_states``) rather than raising on failure."""
        from ketch.dag_testing import run_dag_test

        return run_dag_test(self, logical_date=logical_date, conf=run_conf)

    # ----- whole-graph validation ---------------------------------------------

    def validate(self) -> None:
        """The checks that need the whole graph or heavier libraries (called at parse time)."""
        # owner_links is a dict: it may have been changed after the check at creation.
        self._check_owner_links(self.owner_links)
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
        _context.push_dag(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _context.pop_dag()
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
        from ketch.authoring.xcom_args import DagParam

        # Airflow: each argument of the function (its default applied) becomes a DAG param,
        # and the function receives references to the params, resolved in the try.
        bound = inspect.signature(self.function).bind(*args, **kwargs)
        bound.apply_defaults()
        the_dag = DAG(self.dag_id, **self.kwargs)
        the_dag.fileloc = self.function.__code__.co_filename
        with the_dag:
            refs = {name: DagParam(the_dag, name, value) for name, value in bound.arguments.items()}
            self.function(**refs)
        # Airflow: the function's docstring documents the DAG unless doc_md was given.
        if self.function.__doc__ and not the_dag.doc_md:
            the_dag.doc_md = self.function.__doc__
        return the_dag


def _doc_md(doc_md: str | None) -> str | None:
    """Airflow's rule: a ``doc_md`` ending in ``.md`` that names a file is that file's text."""
    if doc_md is None or not doc_md.endswith(".md"):
        return doc_md
    try:
        with open(doc_md) as fh:
            return fh.read()
    except FileNotFoundError:
        return doc_md
