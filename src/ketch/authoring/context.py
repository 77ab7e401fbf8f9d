"""The running task's context: what ``get_current_context()`` and injected arguments see.

Built from the execution API's ``try/start`` answer, so the task-try process
never needs the database. Keys follow Airflow's names (``logical_date``,
``data_interval_start``, ``ds``, ``ts``, ``params``, ``run_id``, ``ti``...).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

Context = dict[str, Any]

_stack: list[Context] = []


def _parse_dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# The keys a run without a logical date does not have (Airflow 3's task runner adds them
# only when ``dag_run.logical_date`` is set): a template using one fails naming it.
DATE_KEYS = frozenset(
    {
        "logical_date",
        "data_interval_start",
        "data_interval_end",
        "ds",
        "ds_nodash",
        "ts",
        "ts_nodash",
        "ts_nodash_with_tz",
    }
)


def _date_keys(
    logical_date: datetime | None, start: datetime | None, end: datetime | None
) -> dict[str, Any]:
    """``logical_date``, ``ds``, ``ts``, the data interval and friends exist only when the
    run has a logical date (Airflow 3)."""
    if logical_date is None:
        return {}
    return {
        "logical_date": logical_date,
        "data_interval_start": start,
        "data_interval_end": end,
        "ds": logical_date.strftime("%Y-%m-%d"),
        "ds_nodash": logical_date.strftime("%Y%m%d"),
        "ts": logical_date.isoformat(),
        "ts_nodash": logical_date.strftime("%Y%m%dT%H%M%S"),
        "ts_nodash_with_tz": logical_date.isoformat().replace("-", "").replace(":", ""),
    }


def build_context(start_payload: dict[str, Any]) -> Context:
    """The context of one try, from the JSON returned by ``POST /execution/try/start``.

    Besides the run's keys: ``var``, ``conn`` and ``macros`` for templates (see
    :mod:`ketch.authoring.templating`), and ``map_index`` when the payload has one.
    """
    from ketch.authoring.templating import template_context

    p = start_payload
    logical_date = _parse_dt(p.get("logical_date"))
    conf = p.get("conf") or {}
    dag_run = SimpleNamespace(
        dag_id=p.get("dag_id"),
        run_id=p.get("run_id"),
        logical_date=logical_date,
        data_interval_start=_parse_dt(p.get("data_interval_start")),
        data_interval_end=_parse_dt(p.get("data_interval_end")),
        conf=conf,
    )
    ti = SimpleNamespace(
        dag_id=p.get("dag_id"),
        task_id=p.get("task_id"),
        run_id=p.get("run_id"),
        try_number=p.get("try_number"),
        max_tries=p.get("max_tries"),
        # A sensor in reschedule mode: when the first poke of its sequence started (None
        # on the first poke), derived by the execution API from the try history.
        first_reschedule_date=_parse_dt(p.get("first_reschedule_date")),
    )
    extra: dict[str, Any] = {}
    if "map_index" in p:
        extra["map_index"] = ti.map_index = p["map_index"]
    return {
        "dag_id": p.get("dag_id"),
        "task_id": p.get("task_id"),
        "run_id": p.get("run_id"),
        "try_number": p.get("try_number"),
        "max_tries": p.get("max_tries"),
        "params": dict(p.get("params") or {}),
        "dag_run": dag_run,
        "ti": ti,
        "task_instance": ti,
        **_date_keys(logical_date, dag_run.data_interval_start, dag_run.data_interval_end),
        **template_context(),
        **extra,
    }


@contextmanager
def running_context(context: Context) -> Iterator[Context]:
    """Make ``context`` the current one while a task runs (nested calls stack)."""
    _stack.append(context)
    try:
        yield context
    finally:
        _stack.pop()


def get_current_context() -> Context:
    """The context of the task running in this process (Airflow's get_current_context)."""
    if not _stack:
        raise RuntimeError(
            "Current context was requested but no context was found! Are you running within a ketch task?"
        )
    return _stack[-1]
