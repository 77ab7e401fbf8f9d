"""Finished pods on their way out: their log is captured first, then they are deleted.

Kept apart from the executor's tracking of tries because it has its own life: a pod's end
is reported to the scheduler at once, but the pod itself stays until the scheduler's side
has rescued its log (``log_capture(pod, reason)``, :mod:`ketch.logs.pod_log`), because once
it is deleted its container log is gone. A capture that raises keeps the pod and is
retried with backoff (``capture_attempts`` times, 2 s doubling), each failure logged as a
WARNING and counted (what the health endpoint reports); after the last attempt the pod is
deleted anyway (if it is to be deleted) with an ERROR saying its log may be incomplete.
Every finished pod is offered to ``log_capture`` once per scheduler.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ketch.config import KubernetesSettings
from ketch.executors.kubernetes import reasons
from ketch.executors.kubernetes.client import KubeApi, KubeApiError
from ketch.executors.kubernetes.pod import resource_version
from ketch.logs.metrics import LOG_CAPTURE_ABANDONED, LOG_CAPTURE_FAILURES

# The executor's logger: one name for everything the Kubernetes executor says.
log = logging.getLogger("ketch.executors.kubernetes.executor")

CAPTURE_ATTEMPTS = 8
CAPTURE_BACKOFF_FIRST = 2.0  # seconds, doubling
CAPTURE_BACKOFF_MAX = 60.0

LogCapture = Callable[[dict[str, Any], str], None]
"""``log_capture(pod, reason)``: archive the log of a finished pod if its try did not;
raise to keep the pod for another attempt. ``reason``: why the pod ended, in words
(:func:`ketch.executors.kubernetes.reasons.capture_reason`)."""


@dataclass(eq=False)
class _Finished:
    """A finished pod on its way out: its log is captured, then it is deleted if wanted."""

    pod: dict[str, Any]
    reason: str
    delete: bool
    attempts: int = 0  # failed captures so far
    due: float = 0.0  # monotonic time of the next attempt
    queued: bool = False  # an attempt is submitted or running


class FinishedPods:
    """Capture, then deletion, of the executor's finished pods, on one thread pool.

    Shares the executor's lock (``lock``) so that what it knows of a pod and what the
    executor's pod cache says (``known(name)``, asked under that lock) never disagree.
    """

    def __init__(
        self,
        kube: KubernetesSettings,
        api: Callable[[], KubeApi],
        lock: threading.RLock,
        known: Callable[[str], bool],
    ) -> None:
        self.kube = kube
        self._api = api
        self._lock = lock
        self._known = known
        self._pool: ThreadPoolExecutor | None = None
        self._deleting: set[str] = set()
        self.log_capture: LogCapture | None = None
        self.capture_attempts = CAPTURE_ATTEMPTS
        self.capture_backoff = (CAPTURE_BACKOFF_FIRST, CAPTURE_BACKOFF_MAX)
        self._finishing: dict[str, _Finished] = {}  # by pod name: capture pending or running
        self._captured: set[str] = set()  # pods whose capture is done (or given up)
        self.failures = 0  # failed capture attempts since start
        self.abandoned = 0  # pods left (deleted) after the last failed attempt
        self.last_error: str | None = None  # "pod NAME: error", the latest

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="ketch-k8s-delete")

    def stop(self) -> None:
        """Wait for the running captures and deletions; captures not done are redone by the
        next ``adopt()``: their pods are still there."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._finishing.clear()
        self._pool = None

    # -- what the executor asks ----------------------------------------------------------

    @property
    def pending(self) -> int:
        """Finished pods kept because capturing their log failed (a retry is due)."""
        with self._lock:
            return sum(1 for f in self._finishing.values() if f.attempts > 0)

    def state(self) -> dict[str, Any]:
        """For the health endpoint: failures so far, pods waiting for a retry, the last
        error, pods given up."""
        with self._lock:
            return {
                "failures": self.failures,
                "pending": sum(1 for f in self._finishing.values() if f.attempts > 0),
                "abandoned": self.abandoned,
                "last_error": self.last_error,
            }

    def is_deleting(self, name: str) -> bool:
        """Call under the shared lock."""
        return name in self._deleting

    def forget(self, name: str) -> None:
        """The pod is gone (a DELETED event). Call under the shared lock."""
        self._deleting.discard(name)
        self._captured.discard(name)

    # -- a finished pod ------------------------------------------------------------------

    def dispose(
        self,
        pod: dict[str, Any],
        succeeded: bool,
        *,
        force: bool = False,
        reason: str | None = None,
    ) -> None:
        """A finished pod: capture its log, then apply the deletion settings (``force``: it
        never started, delete it anyway)."""
        if succeeded:
            wanted = self.kube.delete_worker_pods
        else:
            wanted = force or self.kube.delete_worker_pods_on_failure
        self.finish(pod, delete=wanted, reason=reason)

    def finish(self, pod: dict[str, Any], *, delete: bool, reason: str | None = None) -> None:
        """Capture the finished (or gone) pod's log once, then delete it if ``delete``.
        ``reason``: why it ended, for the rescued log's footer (default: from its status)."""
        name = pod["metadata"]["name"]
        with self._lock:
            entry = self._finishing.get(name)
            if entry is not None:  # seen again while its capture is pending
                entry.delete = entry.delete or delete
                if resource_version(pod) > resource_version(entry.pod):
                    entry.pod = pod
                return
            capture = self.log_capture is not None and name not in self._captured
            if capture:
                entry = _Finished(pod, reason or reasons.capture_reason(pod), delete)
                self._finishing[name] = entry
        if entry is not None:
            self._submit_capture(entry)
        elif delete:
            self.delete_async(pod)

    def retry_captures(self) -> None:
        """Resubmit the captures whose backoff has passed (the executor's housekeeping)."""
        now = time.monotonic()
        with self._lock:
            due = [f for f in self._finishing.values() if not f.queued and f.due <= now]
        for entry in due:
            self._submit_capture(entry)

    def delete_async(self, pod: dict[str, Any]) -> None:
        """Delete the pod on the pool (after its capture, if one is pending)."""
        name = pod["metadata"]["name"]
        with self._lock:
            entry = self._finishing.get(name)
            if entry is not None:  # deleted once its log is captured
                entry.delete = True
                return
            if name in self._deleting or self._pool is None:
                return
            self._deleting.add(name)
            pool = self._pool
        try:
            pool.submit(self._delete, pod)
        except RuntimeError:  # shutting down
            with self._lock:
                self._deleting.discard(name)

    # -- on the pool -----------------------------------------------------------------------

    def _submit_capture(self, entry: _Finished) -> None:
        name = entry.pod["metadata"]["name"]
        with self._lock:
            pool = self._pool
            if pool is None or entry.queued:
                return
            entry.queued = True
        try:
            pool.submit(self._capture, entry)
        except RuntimeError:  # shutting down: the next scheduler captures it
            with self._lock:
                self._finishing.pop(name, None)

    def _capture(self, entry: _Finished) -> None:
        name = entry.pod["metadata"]["name"]
        capture = self.log_capture
        try:
            if capture is not None:
                capture(entry.pod, entry.reason)
        except Exception as exc:
            if not self._failed(entry, exc):
                return
        with self._lock:
            if self._finishing.get(name) is not entry:
                return  # the executor stopped meanwhile
            del self._finishing[name]
            if self._known(name):  # (a pod gone already sends no DELETED to forget it)
                self._captured.add(name)
            if not entry.delete or name in self._deleting:
                return
            self._deleting.add(name)
        self._delete(entry.pod)

    def _failed(self, entry: _Finished, exc: Exception) -> bool:
        """Count a failed capture and schedule the next; True once it is given up."""
        name = entry.pod["metadata"]["name"]
        first, most = self.capture_backoff
        with self._lock:
            entry.attempts += 1
            self.failures += 1
            LOG_CAPTURE_FAILURES.inc()
            self.last_error = f"pod {name}: {exc}"
            last = entry.attempts >= self.capture_attempts
            delay = min(most, first * 2 ** (entry.attempts - 1))
            if not last:
                entry.due = time.monotonic() + delay
                entry.queued = False
            else:
                self.abandoned += 1
                LOG_CAPTURE_ABANDONED.inc()
        if not last:
            log.warning(
                "capturing the log of pod %s failed (attempt %d of %d, next in %gs;"
                " the pod is kept until then): %s",
                name,
                entry.attempts,
                self.capture_attempts,
                delay,
                exc,
            )
            return False
        log.error(
            "capturing the log of pod %s failed %d times, giving up%s: its try's archived"
            " log may be incomplete: %s",
            name,
            entry.attempts,
            "; deleting the pod anyway" if entry.delete else "",
            exc,
        )
        return True

    def _delete(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        try:
            self._api().delete_pod(name)
        except KubeApiError as exc:
            log.warning("could not delete pod %s: %s", name, exc)
            with self._lock:
                self._deleting.discard(name)
