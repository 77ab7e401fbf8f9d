"""Prometheus metrics of the variable sync.

Counters live in the process that syncs (the scheduler; ``ketch standalone`` serves
them on the web's ``/metrics``). The per-source gauges (last success time, managed
keys, consecutive failures) are read from the ``variable_sync_status`` table when
``/metrics`` is scraped, so the web process shows them even when the scheduler runs
elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

SYNC_RUNS = Counter(
    "ketch_variable_sync_runs",
    "Sync attempts per source and result (changed, unchanged, error).",
    ["source", "result"],
)
SYNC_ERRORS = Counter(
    "ketch_variable_sync_errors",
    "Failed sync attempts per source and error class.",
    ["source", "error"],
)
SYNC_CHANGES = Counter(
    "ketch_variable_sync_changes",
    "Variables changed by the sync per source and action (created, updated, deleted, "
    "overwrote_manual).",
    ["source", "action"],
)
SYNC_DURATION = Histogram(
    "ketch_variable_sync_duration_seconds",
    "Time of one source's sync (fetch and apply).",
    ["source"],
)
AWS_API_CALLS = Counter(
    "ketch_variable_sync_aws_api_calls",
    "AWS Secrets Manager API calls made by the sync, per operation.",
    ["operation"],
)


class SyncStatusCollector(Collector):
    """Per-source gauges read from the status table at scrape time."""

    def __init__(self, load_statuses: Callable[[], list[Any]]) -> None:
        self._load = load_statuses

    def collect(self) -> Iterator[GaugeMetricFamily]:
        last_success = GaugeMetricFamily(
            "ketch_variable_sync_last_success_timestamp_seconds",
            "Unix time of the last successful sync of each source.",
            labels=["source"],
        )
        managed = GaugeMetricFamily(
            "ketch_variable_sync_managed_keys",
            "Variables owned by each source.",
            labels=["source"],
        )
        failures = GaugeMetricFamily(
            "ketch_variable_sync_consecutive_failures",
            "Failed attempts of each source since its last success.",
            labels=["source"],
        )
        for status in self._load():
            if status.last_success_at is not None:
                last_success.add_metric([status.source_id], status.last_success_at.timestamp())
            managed.add_metric([status.source_id], status.managed_keys)
            failures.add_metric([status.source_id], status.consecutive_failures)
        yield last_success
        yield managed
        yield failures
