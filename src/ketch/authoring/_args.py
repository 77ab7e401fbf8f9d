"""Argument conversions shared by DAGs, task groups and tasks (no ketch imports)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from ketch.exceptions import DagDefinitionError

DOC_ATTRS = ("doc", "doc_md", "doc_rst", "doc_json", "doc_yaml")


def seconds(name: str, value: Any) -> float | None:
    """Durations may be given as timedelta or seconds (as Airflow accepts)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise DagDefinitionError(f"{name} must be a timedelta or a number of seconds, not {value!r}")


def optional_str(name: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise DagDefinitionError(f"{name} must be a string, not {value!r}")


def email_list(name: str, value: Any) -> list[str]:
    """Airflow's ``get_email_address_list``: a string splits on ``,`` and ``;``; else a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in re.split(r"[,;]", value) if part.strip()]
    if isinstance(value, Iterable) and not isinstance(value, bytes | dict):
        items = list(value)
        if all(isinstance(i, str) for i in items):
            return items
    raise DagDefinitionError(f"{name} must be a string or a list of strings, not {value!r}")
