"""The few Airflow objects ketch's own do not cover as they are: ``DAG`` and ``@dag``
taking Airflow 2's ``schedule_interval=``, and ``days_ago``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from ketch.authoring import dag as _dag
from ketch.exceptions import DagDefinitionError


def _map_schedule_interval(dag_id: Any, kwargs: dict[str, Any]) -> None:
    """Airflow 2's ``schedule_interval=`` is ``schedule=`` (both at once is an error, as
    in Airflow 2.4+). ``"@once"``/``None``/cron/timedelta mean the same in both."""
    if "schedule_interval" not in kwargs:
        return
    value = kwargs.pop("schedule_interval")
    if "schedule" in kwargs:
        raise DagDefinitionError(
            f"DAG {dag_id!r}: schedule_interval and schedule are both given; use schedule only"
        )
    kwargs["schedule"] = value


def _caller_file() -> str:
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        ("ketch.authoring", "ketch.airflow_compat")
    ):
        frame = frame.f_back  # type: ignore[assignment]
    return frame.f_code.co_filename if frame is not None else ""


class DAG(_dag.DAG):
    """ketch's DAG, also taking Airflow 2's ``schedule_interval=``."""

    def __init__(self, dag_id: str, **kwargs: Any) -> None:
        _map_schedule_interval(dag_id, kwargs)
        super().__init__(dag_id, **kwargs)
        self.fileloc = _caller_file()


def dag(dag_id: Any = None, **dag_kwargs: Any) -> Any:
    """``@dag`` / ``@dag(...)``, also taking ``schedule_interval=``."""
    _map_schedule_interval(dag_id if isinstance(dag_id, str) else None, dag_kwargs)
    return _dag.dag(dag_id, **dag_kwargs)


def days_ago(n: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """Airflow 2's ``airflow.utils.dates.days_ago``: midnight UTC today, ``n`` days back
    (then at ``hour:minute:second``)."""
    today = datetime.now(UTC).replace(hour=hour, minute=minute, second=second, microsecond=0)
    return today - timedelta(days=n)
