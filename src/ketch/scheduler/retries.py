"""When a failed try may run again: Airflow's retry delay and exponential backoff.

Pure functions, shared by the execution API (a try reporting failure) and the
scheduler (a try that died, timed out or became a zombie).

Mirrors Airflow 3.3's ``TaskInstance.next_retry_datetime``: since Airflow 3.2
``retry_exponential_backoff`` is a float multiplier (0 or 1: no backoff; ``True``
is serialized as 2.0, the old behaviour).
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta

from ketch.serialization import SerializedTask

# timedelta's own ceiling, as in Airflow (MAX_RETRY_DELAY there).
_MAX_DELAY_SECONDS = timedelta.max.total_seconds() - 1


def _backoff_multiplier(task: SerializedTask) -> float:
    value = float(task.retry_exponential_backoff)
    return 1.0 if value == 0 else value


def retry_delay_seconds(
    task: SerializedTask, *, dag_id: str, logical_date: datetime | None, try_number: int
) -> float:
    """Seconds to wait before the try after ``try_number``, as Airflow computes it.

    With a backoff multiplier ``m`` the delay is ``retry_delay * m**(try_number-1)`` (at
    least 1s) plus a deterministic per-try jitter of up to the same amount (a hash of the
    try, so two failing tasks do not retry in lock-step), capped by ``max_retry_delay``.
    """
    delay = task.retry_delay
    multiplier = _backoff_multiplier(task)
    if multiplier != 1.0 and multiplier > 0:
        try:
            min_backoff = math.ceil(delay * (multiplier ** (try_number - 1)))
        except OverflowError:
            min_backoff = int(_MAX_DELAY_SECONDS)
        min_backoff = max(1, min_backoff)
        ti_hash = int(
            hashlib.sha1(
                f"{dag_id}#{task.task_id}#{logical_date}#{try_number}".encode(),
                usedforsecurity=False,
            ).hexdigest(),
            16,
        )
        delay = min(min_backoff + ti_hash % min_backoff, _MAX_DELAY_SECONDS)
        if task.max_retry_delay:
            delay = min(delay, task.max_retry_delay)
    return float(delay)
