"""Prometheus metrics of task logs.

Counters live in the process that does the work (the scheduler: the Kubernetes
executor's log captures, the log keeper's shipping); ``ketch standalone`` serves them on
the web's ``/metrics``. The web adds ``ketch_log_archive_up`` from its own archive check,
so a missing bucket or refused credentials show on every web replica.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LOG_CAPTURE_FAILURES = Counter(
    "ketch_log_capture_failures",
    "Failed attempts to capture a finished pod's log into the archive (the pod is kept and "
    "the capture retried).",
)
LOG_CAPTURE_ABANDONED = Counter(
    "ketch_log_capture_abandoned",
    "Pods given up after the last failed capture attempt (their archived log may be incomplete).",
)
LOG_RESCUES = Counter(
    "ketch_log_rescues",
    "Logs completed by the scheduler because their try ended without its final flush.",
    ["source"],
)
LOG_SHIP_ERRORS = Counter(
    "ketch_log_ship_errors",
    "Failed attempts of the scheduler to ship a local try's log to the archive.",
)


class ArchiveUpCollector(Collector):
    """``ketch_log_archive_up``: 1 when the archive answers, else 0 (checked at scrape)."""

    def __init__(self, status: Callable[[], str]) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        gauge = GaugeMetricFamily(
            "ketch_log_archive_up", "1 when the task log archive can be used, else 0."
        )
        gauge.add_metric([], 1.0 if self._status() == "ok" else 0.0)
        yield gauge
