"""Settings-derived defaults for DAGs and tasks, read lazily.

DAG files are imported by the task-try process, which must stay light: importing
``ketch.config`` (pydantic-settings) costs over 100 ms. Defaults are therefore
looked up only when a value is actually needed and was not given explicitly.
The DAG processor hands its own settings to the parse child as JSON in
``KETCH_PARSE_DEFAULTS`` so the child needs neither the config module nor the
environment the processor was configured from.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ketch.config import Settings

PARSE_DEFAULTS_ENV = "KETCH_PARSE_DEFAULTS"

_cache: dict[str, dict[str, Any]] = {}


def defaults_from_settings(settings: Settings) -> dict[str, Any]:
    """The settings a DAG definition depends on, as plain JSON data."""
    core, sched = settings.core, settings.scheduler
    return {
        "catchup_by_default": sched.catchup_by_default,
        "create_cron_data_intervals": sched.create_cron_data_intervals,
        "create_delta_data_intervals": sched.create_delta_data_intervals,
        "max_active_runs_per_dag": core.max_active_runs_per_dag,
        "max_active_tasks_per_dag": core.max_active_tasks_per_dag,
        "max_consecutive_failed_dag_runs_per_dag": core.max_consecutive_failed_dag_runs_per_dag,
        "default_task_retries": core.default_task_retries,
        "default_task_retry_delay": core.default_task_retry_delay,
        "max_task_retry_delay": core.max_task_retry_delay,
        "default_task_execution_timeout": core.default_task_execution_timeout,
        "executor": core.executor,
        # The try, the fork server and the parse child install the airflow import shim.
        "airflow_compat": core.airflow_compat,
    }


def parse_defaults() -> dict[str, Any]:
    """The current defaults: from the processor's JSON if given, else from the settings."""
    raw = os.environ.get(PARSE_DEFAULTS_ENV)
    if raw:
        cached = _cache.get(raw)
        if cached is None:
            cached = _cache[raw] = json.loads(raw)
        return cached
    from ketch.config import get_settings

    return defaults_from_settings(get_settings())


def default(name: str) -> Any:
    return parse_defaults()[name]
