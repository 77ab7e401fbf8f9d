"""``KubernetesExecutor``: every task try is one pod.

Launch: the pod is built (template -> defaults -> executor_config; an invalid config fails
the launch at once with the field named) and created on a small thread pool, so a batch of
tries has up to ``worker_pods_creation_batch_size`` creates in flight under the shared
QPS/burst limit. The pod name is deterministic per try: a 409 means "already launched".

State: a single watch on ``app.kubernetes.io/managed-by=ketch`` (see ``watch``) feeds the
latest version of every pod into a cache and turns phases into ``TryEnded`` events at once
(reasons from ``reasons``). A housekeeping thread fails tries whose pod stays Pending past
``worker_pods_pending_timeout`` (with the pod's events), removes kept failed pods after
``failed_worker_pod_retention`` and reconciles with one list call every
``reconcile_interval``. There is no per-try polling.

Orphans: a pod with ketch's labels that no tracked try owns belongs to a try that is no longer
queued or running (cleared, marked or superseded, perhaps while no scheduler ran). ``adopt``
(called at every scheduler start, also with no tries) and, once adoption has happened,
``reconcile`` delete it if it still runs; a finished one follows the deletion settings.

Every ``TryEnded`` names the pod's hostname (``pod.pod_hostname``): what the try recorded
as its hostname at start, so the scheduler can tell this pod's end from another's.

Finished pods (``finished_pods``): first their log is captured (``log_capture(pod, reason)``,
set by the scheduler's side: it rescues the log of a try that did not close it itself, from
the pod's container log; the executor knows nothing of archives), then they are deleted per
``delete_worker_pods`` / ``delete_worker_pods_on_failure`` (or kept). Every finished pod is
offered to ``log_capture`` once per scheduler: tracked tries' pods, pods of tries that ended
while no scheduler ran (found by ``adopt``), kept pods, pods given up while Pending. A
capture that raises keeps the pod and is retried; the executor's ``log_capture_*``
attributes are what the health endpoint reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ketch.config import Settings
from ketch.executors.base import (
    EventSink,
    LaunchError,
    LaunchRequest,
    RunningTry,
    TryEnded,
    TryKey,
)
from ketch.executors.kubernetes import reasons
from ketch.executors.kubernetes.client import TRANSIENT_CODES, KubeApi, KubeApiError
from ketch.executors.kubernetes.finished_pods import FinishedPods, LogCapture
from ketch.executors.kubernetes.pod import (
    SELECTOR,
    PodBuilder,
    PodConfigError,
    key_of,
    pod_hostname,
    pod_name,
    resource_version,
    stub_pod,
)
from ketch.executors.kubernetes.watch import PodWatcher

log = logging.getLogger(__name__)

VANISHED = "pod vanished (deleted outside ketch or lost while the scheduler was down)"
CANCELLED = "the try was cancelled: its pod was deleted"
DELETED_EARLY = "the pod was deleted before it finished"
_HOUSEKEEPING_INTERVAL = 1.0


@dataclass(eq=False)
class _Tracked:
    key: TryKey
    ti_id: int
    name: str
    pending_since: float  # monotonic
    started: bool = False
    cancelled: bool = False
    creating: bool = False  # its create is in flight (or retried in the background)
    hostname: str | None = None  # what the try sees as its hostname (see pod_hostname)


class KubernetesExecutor:
    """:class:`ketch.executors.base.Executor` running each try as a pod."""

    name = "kubernetes"

    def __init__(self, settings: Settings, api: KubeApi | None = None) -> None:
        self.settings = settings
        self.kube = settings.kubernetes
        self.builder = PodBuilder(settings)
        self._api = api
        self._sink: EventSink | None = None
        self._lock = threading.RLock()
        self._tries: dict[TryKey, _Tracked] = {}
        self._by_name: dict[str, _Tracked] = {}
        self._pods: dict[str, dict[str, Any]] = {}  # latest version of every pod we saw
        self._create_pool: ThreadPoolExecutor | None = None
        self._watcher: PodWatcher | None = None
        self._stop = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self._last_reconcile = time.monotonic()
        # adopt() and reconcile() one at a time; running orphans are only deleted by
        # reconcile() once adopt() has told us which tries the database still runs
        self._reconcile_lock = threading.Lock()
        self._adopted = False
        self.finished = FinishedPods(
            self.kube, lambda: self.api, self._lock, lambda name: name in self._pods
        )

    # -- finished pods' log capture (see finished_pods) -------------------------------

    @property
    def log_capture(self) -> LogCapture | None:
        """Called once with every finished pod (as last seen) and why it ended, before any
        deletion: the scheduler rescues the pod's log here. An exception keeps the pod and
        the call is retried (see :mod:`ketch.executors.kubernetes.finished_pods`)."""
        return self.finished.log_capture

    @log_capture.setter
    def log_capture(self, capture: LogCapture | None) -> None:
        self.finished.log_capture = capture

    @property
    def capture_attempts(self) -> int:
        return self.finished.capture_attempts

    @capture_attempts.setter
    def capture_attempts(self, attempts: int) -> None:
        self.finished.capture_attempts = attempts

    @property
    def capture_backoff(self) -> tuple[float, float]:
        """(first delay, longest delay) in seconds between capture attempts, doubling."""
        return self.finished.capture_backoff

    @capture_backoff.setter
    def capture_backoff(self, backoff: tuple[float, float]) -> None:
        self.finished.capture_backoff = backoff

    @property
    def log_capture_failures(self) -> int:
        """Failed capture attempts since start."""
        return self.finished.failures

    @property
    def log_capture_abandoned(self) -> int:
        """Pods left (deleted) after the last failed attempt."""
        return self.finished.abandoned

    @property
    def log_capture_last_error(self) -> str | None:
        """``"pod NAME: error"``, the latest."""
        return self.finished.last_error

    @property
    def log_capture_pending(self) -> int:
        """Finished pods kept because capturing their log failed (a retry is due)."""
        return self.finished.pending

    def log_capture_state(self) -> dict[str, Any]:
        """For the health endpoint: failures so far, pods waiting for a retry, the last
        error, pods given up."""
        return self.finished.state()

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi(self.kube)
        return self._api

    # -- lifecycle -------------------------------------------------------------------

    def start(self, on_try_ended: EventSink) -> None:
        self._sink = on_try_ended
        self._stop.clear()
        api = self.api
        self._create_pool = ThreadPoolExecutor(
            self.kube.worker_pods_creation_batch_size, thread_name_prefix="ketch-k8s-create"
        )
        self.finished.start()
        self._watcher = PodWatcher(api, SELECTOR, self._on_event, self._on_sync)
        self._watcher.start()
        self._housekeeper = threading.Thread(
            target=self._housekeeping_loop, name="ketch-k8s-housekeeping", daemon=True
        )
        self._housekeeper.start()

    def stop(self) -> None:
        """Stop watching; pods keep running and are adopted by the next scheduler."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.stop()
        if self._housekeeper is not None:
            self._housekeeper.join(timeout=5)
        if self._create_pool is not None:
            self._create_pool.shutdown(wait=True, cancel_futures=True)
        self.finished.stop()
        with self._lock:
            self._tries.clear()
            self._by_name.clear()
        self._adopted = False  # nothing is tracked now: no orphans until the next adopt()
        self._watcher = self._housekeeper = None
        self._create_pool = None

    def running(self) -> set[TryKey]:
        with self._lock:
            return set(self._tries)

    # -- launch ----------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> str:
        result = self.launch_many([request])[0]
        if isinstance(result, LaunchError):
            raise result
        return result

    def launch_many(self, requests: Sequence[LaunchRequest]) -> list[str | LaunchError]:
        """Create the pods concurrently (bounded in flight, rate-limited); results in order."""
        if self._create_pool is None:
            return [LaunchError("the kubernetes executor is not started") for _ in requests]
        futures: list[Future[str] | LaunchError] = []
        for request in requests:
            try:
                pod = self.builder.build(request)
            except PodConfigError as exc:
                futures.append(LaunchError(f"invalid pod for this task: {exc}"))
                continue
            except Exception as exc:  # a template of unexpected shape: fail the try, say why
                log.exception("building the pod of %s failed", request.key)
                futures.append(LaunchError(f"could not build the pod for this task: {exc!r}"))
                continue
            tracked = self._track(
                request.key, request.ti_id, pod["metadata"]["name"], pod_hostname(pod)
            )
            futures.append(self._create_pool.submit(self._create, tracked, pod))
        results: list[str | LaunchError] = []
        for item in futures:
            if isinstance(item, LaunchError):
                results.append(item)
                continue
            try:
                results.append(item.result())
            except LaunchError as exc:
                results.append(exc)
        return results

    def _track(self, key: TryKey, ti_id: int, name: str, hostname: str | None) -> _Tracked:
        tracked = _Tracked(key, ti_id, name, pending_since=time.monotonic(), hostname=hostname)
        with self._lock:
            old = self._tries.get(key)
            if old is not None:
                self._by_name.pop(old.name, None)
            self._tries[key] = tracked
            self._by_name[name] = tracked
        return tracked

    def _create(self, tracked: _Tracked, pod: dict[str, Any]) -> str:
        tracked.creating = True  # not "vanished" while its create is in flight
        try:
            created = self.api.create_pod(pod)
        except KubeApiError as exc:
            if exc.status in TRANSIENT_CODES and not self._stop.is_set():
                # API unreachable or throttled: the try stays queued while we keep trying
                # in the background (same pod name: no duplicate can appear)
                log.warning("creating pod %s: %s; retrying in the background", tracked.name, exc)
                threading.Thread(
                    target=self._create_in_background,
                    args=(tracked, pod),
                    name="ketch-k8s-create-retry",
                    daemon=True,
                ).start()
                return f"{self.kube.namespace}/{tracked.name}"
            self._forget(tracked)
            raise LaunchError(f"could not create pod {tracked.name}: {exc}") from exc
        self._created(tracked, created)
        return f"{self.kube.namespace}/{tracked.name}"

    def _create_in_background(self, tracked: _Tracked, pod: dict[str, Any]) -> None:
        delay = 1.0
        while not self._stop.wait(delay):
            with self._lock:
                if self._tries.get(tracked.key) is not tracked:
                    return  # cancelled or ended meanwhile
            try:
                created = self.api.create_pod(pod)
            except KubeApiError as exc:
                if exc.status in TRANSIENT_CODES:
                    delay = min(delay * 2, 30.0)
                    continue
                self._emit(
                    tracked,
                    reasons.Outcome(None, f"could not create pod {tracked.name}: {exc}", True),
                )
                return
            self._created(tracked, created)
            return

    def _created(self, tracked: _Tracked, created: bool) -> None:
        tracked.pending_since = time.monotonic()
        tracked.creating = False
        if not created:
            log.info("pod %s already exists: the try was launched before", tracked.name)
        # a watch event may have arrived before we registered; look at the cache again
        with self._lock:
            cached = self._pods.get(tracked.name)
        if cached is not None:
            self._observe(tracked, cached)

    # -- events ----------------------------------------------------------------------

    def _forget(self, tracked: _Tracked) -> bool:
        with self._lock:
            if self._tries.get(tracked.key) is not tracked:
                return False
            del self._tries[tracked.key]
            self._by_name.pop(tracked.name, None)
            return True

    def _emit(self, tracked: _Tracked, outcome: reasons.Outcome) -> bool:
        """Report the try's end (once: False if it had ended already)."""
        if not self._forget(tracked):
            return False
        # Reported as it is: how many such tries are free is the scheduler's decision,
        # counted from the try history in the database ([kubernetes]
        # max_failed_before_start_retries), which outlives this process and tells mapped
        # instances apart.
        before_start = outcome.failed_before_start
        reason = outcome.reason
        if tracked.cancelled and not outcome.succeeded:
            reason = "cancelled; pod deleted" + (f" ({reason})" if reason else "")
        event = TryEnded(
            tracked.key,
            tracked.ti_id,
            outcome.exit_code,
            reason,
            before_start,
            hostname=tracked.hostname,
        )
        log.info("try %s ended: exit %s %s", tracked.key, outcome.exit_code, reason or "")
        if self._sink is not None:
            try:
                self._sink(event)
            except Exception:
                log.exception("event sink failed for %s", event)
        return True

    @staticmethod
    def _note_hostname(tracked: _Tracked, pod: dict[str, Any]) -> None:
        hostname = pod_hostname(pod)
        if hostname is not None:  # e.g. with hostNetwork, known once the pod is scheduled
            tracked.hostname = hostname

    def _observe(self, tracked: _Tracked, pod: dict[str, Any]) -> None:
        """Act on the latest version of a tracked try's pod."""
        self._note_hostname(tracked, pod)
        if reasons.is_started(pod):
            tracked.started = True
        outcome = reasons.ended(pod)
        if outcome is None:
            return
        self._emit(tracked, outcome)
        self.finished.dispose(
            pod,
            outcome.succeeded,
            force=not reasons.is_started(pod),
            reason=CANCELLED if tracked.cancelled else None,
        )

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        name = (pod.get("metadata") or {}).get("name", "")
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(name, None)
                self.finished.forget(name)
            else:
                old = self._pods.get(name)
                if old is not None and resource_version(old) > resource_version(pod):
                    return
                self._pods[name] = pod
            tracked = self._by_name.get(name)
        if tracked is None:
            return
        if kind == "DELETED":
            self._note_hostname(tracked, pod)
            finished = reasons.ended(pod)
            outcome = finished or reasons.Outcome(
                None, "pod deleted before it finished" if not tracked.cancelled else None
            )
            if self._emit(tracked, outcome):
                # the pod's log is gone: a log its try did not complete is closed saying so
                why = CANCELLED if tracked.cancelled else None if finished else DELETED_EARLY
                self.finished.finish(pod, delete=False, reason=why)
            return
        self._observe(tracked, pod)

    def _on_sync(self, pods: list[dict[str, Any]]) -> None:
        """A (re)list: replace the cache; tracked tries whose pod is gone ended unseen."""
        names = {p["metadata"]["name"] for p in pods}
        with self._lock:
            self._pods = {p["metadata"]["name"]: p for p in pods}
            tracked_list = list(self._tries.values())
        for pod in pods:
            self._on_event("MODIFIED", pod)
        self._check_vanished(tracked_list, names)

    def _check_vanished(self, tracked_list: list[_Tracked], names: set[str]) -> None:
        for tracked in tracked_list:
            # only tries older than a few seconds: a create may be in flight right now
            gone = (
                tracked.name not in names
                and not tracked.creating
                and time.monotonic() - tracked.pending_since > 5
            )
            if gone and self._emit(tracked, reasons.Outcome(None, VANISHED)):
                self.finished.finish(
                    stub_pod(tracked.key, tracked.name), delete=False, reason=VANISHED
                )

    # -- housekeeping ----------------------------------------------------------------

    def _housekeeping_loop(self) -> None:
        while not self._stop.wait(_HOUSEKEEPING_INTERVAL):
            try:
                self.finished.retry_captures()
                self._check_pending()
                if time.monotonic() - self._last_reconcile >= self.kube.reconcile_interval:
                    self.reconcile()
            except Exception:
                log.exception("kubernetes executor housekeeping failed")

    def _check_pending(self) -> None:
        now = time.monotonic()
        timeout = self.kube.worker_pods_pending_timeout
        with self._lock:
            overdue = [
                (t, self._pods.get(t.name))
                for t in self._tries.values()
                if not t.started and not t.creating and now - t.pending_since > timeout
            ]
        for tracked, pod in overdue:
            events: list[dict[str, Any]] = []
            try:
                events = self.api.pod_events(tracked.name)
            except KubeApiError as exc:
                log.warning("could not read the events of pod %s: %s", tracked.name, exc)
            reason = reasons.pending_reason(pod or {}, events, now - tracked.pending_since)
            self._emit(tracked, reasons.Outcome(None, reason, failed_before_start=True))
            self.finished.finish(
                pod or stub_pod(tracked.key, tracked.name), delete=True, reason=reason
            )

    def reconcile(self) -> None:
        """One list call: missed ends, vanished pods, expired kept pods, orphans."""
        with self._reconcile_lock:
            self._last_reconcile = time.monotonic()
            pods, _ = self.api.list_pods(SELECTOR)
            names = {p["metadata"]["name"] for p in pods}
            with self._lock:
                tracked_list = list(self._tries.values())
            for pod in pods:
                self._on_event("MODIFIED", pod)
            self._check_vanished(tracked_list, names)
            # before the first adopt() an untracked running pod may be a try the database
            # still runs (the scheduler has not offered it yet): leave it alone until then
            self._clean_untracked(pods, delete_running=self._adopted)

    def _clean_untracked(
        self,
        pods: list[dict[str, Any]],
        *,
        delete_running: bool,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        """Pods of ketch's labels that no tracked try owns (nor ``skip`` names). Finished:
        the deletion settings (a failed pod goes once it is past its retention, or at once if
        it never started). Still running (``delete_running``): its try is no longer queued or
        running in the database, so the pod is deleted. A pod is judged on the latest version
        seen and on what is tracked now (a launch tracks its try before creating the pod, so a
        pod whose create is in flight is never taken for an orphan)."""
        retention = self.kube.failed_worker_pod_retention
        for listed in pods:
            name = listed["metadata"]["name"]
            if name in skip:
                continue
            with self._lock:
                if name in self._by_name or self.finished.is_deleting(name):
                    continue
                cached = self._pods.get(name)
            pod = (
                cached
                if cached is not None and resource_version(cached) > resource_version(listed)
                else listed
            )
            outcome = reasons.ended(pod)
            if outcome is None:
                key = key_of(pod)
                if (
                    delete_running
                    and key is not None  # a pod with ketch's try labels, not just the selector's
                    and not (pod.get("metadata") or {}).get("deletionTimestamp")
                ):
                    log.info(
                        "pod %s runs try %s, which is no longer queued or running: deleting it",
                        name,
                        key,
                    )
                    self.finished.delete_async(pod)
                continue
            if outcome.succeeded:
                self.finished.dispose(pod, True)
                continue
            finished = reasons.finished_at(pod)
            expired = finished is not None and time.time() - finished > retention
            self.finished.dispose(pod, False, force=expired or not reasons.is_started(pod))

    # -- adoption --------------------------------------------------------------------

    def adopt(self, tries: Iterable[RunningTry]) -> list[TryKey]:
        """One list call by label selector (also with no tries: the scheduler calls it at
        every start); match pods to the offered tries by try key. Offered tries are tracked
        from their pod; offered tries launched before whose pod is gone are reported ended.
        Pods of tries not offered (nor tracked) are orphans: deleted if still running (the
        database no longer runs their try), else handled by the deletion settings."""
        offered = list(tries)
        with self._reconcile_lock:
            pods, _ = self.api.list_pods(SELECTOR)
            by_name = {p["metadata"]["name"]: p for p in pods}
            by_key: dict[TryKey, dict[str, Any]] = {}
            for p in pods:
                k = key_of(p)
                if k is not None:
                    by_key.setdefault(k, p)
            adopted: list[TryKey] = []
            wanted: set[str] = set()
            for running in offered:
                pod = by_name.get(pod_name(running.key))
                if pod is None or key_of(pod) not in (None, running.key):
                    pod = by_key.get(running.key)
                if pod is None:
                    name = pod_name(running.key)
                    if running.external_executor_id:
                        log.info("try %s: its pod %s is gone", running.key, name)
                        self.finished.finish(
                            stub_pod(running.key, name), delete=False, reason=VANISHED
                        )
                        if self._sink is not None:
                            self._sink(
                                TryEnded(
                                    running.key,
                                    running.ti_id,
                                    None,
                                    VANISHED,
                                    hostname=pod_hostname({"metadata": {"name": name}}),
                                )
                            )
                    continue
                name = pod["metadata"]["name"]
                wanted.add(name)
                tracked = self._track(running.key, running.ti_id, name, pod_hostname(pod))
                with self._lock:
                    cached = self._pods.get(name)
                    latest = (
                        cached
                        if cached is not None and resource_version(cached) > resource_version(pod)
                        else pod
                    )
                    self._pods[name] = latest
                adopted.append(running.key)
                self._observe(tracked, latest)
            self._clean_untracked(pods, delete_running=True, skip=frozenset(wanted))
            self._adopted = True
        return adopted

    # -- cancel ----------------------------------------------------------------------

    def cancel(self, key: TryKey) -> None:
        with self._lock:
            tracked = self._tries.get(key)
        if tracked is None or tracked.cancelled:
            return
        tracked.cancelled = True
        with self._lock:
            pod = self._pods.get(tracked.name) or {"metadata": {"name": tracked.name}}
        self.finished.delete_async(pod)
