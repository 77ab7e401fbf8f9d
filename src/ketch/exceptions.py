"""Exceptions DAG authors raise, and errors ketch reports. No heavy imports here."""

from __future__ import annotations

from datetime import datetime


class KetchException(Exception):
    """Base of ketch's own exceptions."""


class SkipTask(KetchException):
    """Raise inside a task to end it as ``skipped`` (Airflow's AirflowSkipException)."""


class FailTask(KetchException):
    """Raise inside a task to fail it without using its remaining retries (AirflowFailException)."""


class SensorTimeout(FailTask):
    """A sensor waited longer than its ``timeout``: fails without retry, as in Airflow."""


class RescheduleTask(KetchException):
    """Raise inside a task to end this try as ``up_for_reschedule``: the task instance holds
    no slot until ``reschedule_date``, then runs again (Airflow's AirflowRescheduleException,
    what a sensor in ``mode="reschedule"`` raises when its poke finds nothing yet)."""

    def __init__(self, reschedule_date: datetime) -> None:
        if reschedule_date.tzinfo is None:
            raise ValueError("reschedule_date must be timezone-aware")
        super().__init__(reschedule_date)
        self.reschedule_date = reschedule_date


class TaskTimeout(KetchException):
    """The task ran longer than its execution_timeout."""


class DagDefinitionError(KetchException):
    """A DAG file defines something invalid: a cycle, a duplicate task id, a bad argument."""


class ParamValidationError(KetchException):
    """A run's conf/params do not satisfy the DAG's params; ``field`` names the offending one."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"param {field!r}: {message}")
        self.field = field
        self.message = message


# Airflow spellings, so moved DAGs keep working with a changed import only.
AirflowSkipException = SkipTask
AirflowFailException = FailTask
AirflowSensorTimeout = SensorTimeout
AirflowRescheduleException = RescheduleTask
