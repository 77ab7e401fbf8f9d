"""The ``VariableSource`` protocol: fetch a versioned snapshot of key -> value.

A source is asked ``fetch(previous_version)`` with the version of the snapshot last
applied from it (None before the first). It answers :class:`Unchanged` when the
version is the same (cheaply: a version check, not the values), a full
:class:`Snapshot` otherwise, or raises :class:`SourceError` with a reason that never
contains a secret value. A snapshot is always complete: a key missing from it is a
key the source no longer has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Snapshot:
    """Every key of the source at one version (values are strings; JSON text for
    structured values)."""

    version: str
    values: dict[str, str]


@dataclass(frozen=True)
class Unchanged:
    """The source still has ``version``, the one applied last."""

    version: str


class SourceError(Exception):
    """A source cannot give a good snapshot now: unreachable, denied, missing, or invalid.

    ``kind`` is a short machine-readable class (for metrics), the message a readable
    reason; neither includes a value.
    """

    def __init__(self, reason: str, *, kind: str = "error") -> None:
        super().__init__(reason)
        self.kind = kind


class VariableSource(Protocol):
    source_id: str
    kind: str

    def fetch(self, previous_version: str | None) -> Snapshot | Unchanged: ...


def value_text(value: Any) -> str:
    """A variable's stored text: strings as they are, anything else as its JSON text
    (as Airflow's ``variables import`` does with ``serialize_json``)."""
    return value if isinstance(value, str) else json.dumps(value)


def variables_from_json_object(text: str, what: str) -> dict[str, str]:
    """The variables of a JSON object in Airflow's ``variables.json`` format.

    Both shapes Airflow's import reads are accepted: ``{"key": value}`` and
    ``{"key": {"value": value, "description": "..."}}``. Raises SourceError for text
    that is not JSON or not an object (the message names the position, never the text).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(
            f"{what} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            kind="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise SourceError(
            f"{what} is JSON but not an object of variables (got {type(data).__name__})",
            kind="not_an_object",
        )
    values: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict) and "value" in value and set(value) <= {"value", "description"}:
            value = value["value"]
        values[key] = value_text(value)
    return values
