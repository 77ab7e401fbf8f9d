"""The errors a user action reports back: each names what was not found or what was wrong.

The REST API maps them to statuses (:mod:`ketch.api.rest.errors`); the CLI prints them.
"""

from __future__ import annotations

from collections.abc import Iterable

from ketch.db.models import DEFAULT_POOL_NAME
from ketch.exceptions import KetchException


class OperationError(KetchException):
    """Base of the errors a user action reports back to the user."""


class NotFound(OperationError, LookupError):
    """A DAG, run or task instance the user named does not exist (REST: 404)."""


class DagNotFound(NotFound):
    def __init__(self, dag_id: str) -> None:
        super().__init__(f"DAG {dag_id!r} not found")
        self.dag_id = dag_id


class DagRunNotFound(NotFound):
    def __init__(self, dag_id: str, run_id: str) -> None:
        super().__init__(f"DAG run {run_id!r} of DAG {dag_id!r} not found")


class TaskNotFound(NotFound):
    def __init__(self, dag_id: str, task_ids: Iterable[str]) -> None:
        names = ", ".join(repr(t) for t in sorted(task_ids))
        super().__init__(f"task {names} not found in DAG {dag_id!r}")


class TaskInstanceNotFound(NotFound):
    """The task exists, but not the instance asked for (a mapped task's map_index)."""


class PoolNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"pool {name!r} not found")
        self.name = name


class DagRunAlreadyExists(OperationError):
    """A run with that run_id (or logical date) exists already (REST: 409)."""


class InvalidRequest(OperationError, ValueError):
    """A value the user gave is not acceptable; ``field`` names it (REST: 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DefaultPoolNotDeletable(OperationError):
    """The default pool is where tasks without a pool run: it cannot be deleted (REST: 400,
    as Airflow's "Default Pool can't be deleted"); its slots can be changed."""

    def __init__(self) -> None:
        super().__init__(f"the default pool {DEFAULT_POOL_NAME!r} cannot be deleted")
