"""When a failed try may run again: Airflow's retry delay and exponential backoff.

Pure functions, shared by the execution API (a try reporting failure) and the
scheduler (a try that died, timed out or became a zombie).
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta

from ketch.serialization import SerializedTask

# timedelta's own ceiling, as in Airflow (MAX_RETRY_DELAY there).
_MAX_DELAY_SECONDS = timedelta.max.total_seconds() - 1


def retry_delay_seconds(
    task: SerializedTask, *, dag_id: str, logical_date: datetime | None, try_number: int
) -> float:
    """Seconds to wait before the try after ``try_number``, as Airflow computes it.

    With exponential backoff the delay is ``retry_delay * 2**(try_number-1)`` plus a
    deterministic per-try jitter of up to the same amount (a hash of the try, so two
    failing tasks do not retry in lock-step), capped by ``max_retry_delay``.
    """
    delay = task.retry_delay
    if task.retry_exponential_backoff:
        min_backoff = max(1, math.ceil(delay * (2 ** (try_number - 1))))
        ti_hash = int(
            hashlib.sha1(
                f"{dag_id}#{task.task_id}#{logical_date}#{try_number}".encode()
            ).hexdigest(),
            16,
        )
        delay = min(min_backoff + ti_hash % min_backoff, _MAX_DELAY_SECONDS)
    if task.max_retry_delay is not None:
        delay = min(delay, task.max_retry_delay)
    return float(delay)
