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

Finished pods: first their log is captured (``log_capture(pod, reason)``, set by the
scheduler's side: it rescues the log of a try that did not close it itself, from the pod's
container log; the executor knows nothing of archives), then they are deleted per
``delete_worker_pods`` / ``delete_worker_pods_on_failure`` (or kept). Every finished pod is
offered to ``log_capture`` once per scheduler: tracked tries' pods, pods of tries that ended
while no scheduler ran (found by ``adopt``), kept pods, pods given up while Pending. A
capture that raises keeps the pod: it is retried with backoff (``capture_attempts`` times,
2 s doubling), each failure logged as a WARNING and counted (``log_capture_failures``,
``log_capture_pending``, ``log_capture_last_error``: what the health endpoint reports);
after the last attempt the pod is deleted anyway (if it is to be deleted) with an ERROR
saying its log may be incomplete (``log_capture_abandoned``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
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
from ketch.executors.kubernetes.pod import (
    SELECTOR,
    PodBuilder,
    PodConfigError,
    key_of,
    pod_hostname,
    pod_name,
    try_annotations,
)
from ketch.executors.kubernetes.watch import PodWatcher
from ketch.logs.metrics import LOG_CAPTURE_ABANDONED, LOG_CAPTURE_FAILURES

log = logging.getLogger(__name__)

VANISHED = "pod vanished (deleted outside ketch or lost while the scheduler was down)"
CANCELLED = "the try was cancelled: its pod was deleted"
DELETED_EARLY = "the pod was deleted before it finished"
_HOUSEKEEPING_INTERVAL = 1.0
CAPTURE_ATTEMPTS = 8
CAPTURE_BACKOFF_FIRST = 2.0  # seconds, doubling
CAPTURE_BACKOFF_MAX = 60.0

LogCapture = Callable[[dict[str, Any], str], None]
"""``log_capture(pod, reason)``: archive the log of a finished pod if its try did not;
raise to keep the pod for another attempt. ``reason``: why the pod ended, in words
(:func:`ketch.executors.kubernetes.reasons.capture_reason`)."""


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


@dataclass(eq=False)
class _Finished:
    """A finished pod on its way out: its log is captured, then it is deleted if wanted."""

    pod: dict[str, Any]
    reason: str
    delete: bool
    attempts: int = 0  # failed captures so far
    due: float = 0.0  # monotonic time of the next attempt
    queued: bool = False  # an attempt is submitted or running


def _stub(key: TryKey, name: str) -> dict[str, Any]:
    """A pod known only by name and try (gone, or never seen)."""
    return {"metadata": {"name": name, "annotations": try_annotations(key)}}


def _rv(pod: dict[str, Any]) -> int:
    try:
        return int((pod.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _finished_at(pod: dict[str, Any]) -> float | None:
    """Epoch seconds when the pod's containers finished (or it was created), if known."""
    stamps = []
    for s in (pod.get("status") or {}).get("containerStatuses") or []:
        fin = ((s.get("state") or {}).get("terminated") or {}).get("finishedAt")
        if fin:
            stamps.append(fin)
    stamp = max(stamps) if stamps else (pod.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


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
        self._deleting: set[str] = set()
        self._before_start_failures: dict[tuple[str, str, str], int] = {}
        self._create_pool: ThreadPoolExecutor | None = None
        self._delete_pool: ThreadPoolExecutor | None = None
        self._watcher: PodWatcher | None = None
        self._stop = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self._last_reconcile = time.monotonic()
        # adopt() and reconcile() one at a time; running orphans are only deleted by
        # reconcile() once adopt() has told us which tries the database still runs
        self._reconcile_lock = threading.Lock()
        self._adopted = False
        self.log_capture: LogCapture | None = None
        """Called once with every finished pod (as last seen) and why it ended, before any
        deletion: the scheduler rescues the pod's log here. An exception keeps the pod and
        the call is retried (see the module's docstring)."""
        self.capture_attempts = CAPTURE_ATTEMPTS
        self.capture_backoff = (CAPTURE_BACKOFF_FIRST, CAPTURE_BACKOFF_MAX)
        self._finishing: dict[str, _Finished] = {}  # by pod name: capture pending or running
        self._captured: set[str] = set()  # pods whose capture is done (or given up)
        self.log_capture_failures = 0  # failed capture attempts since start
        self.log_capture_abandoned = 0  # pods left (deleted) after the last failed attempt
        self.log_capture_last_error: str | None = None  # "pod NAME: error", the latest

    @property
    def log_capture_pending(self) -> int:
        """Finished pods kept because capturing their log failed (a retry is due)."""
        with self._lock:
            return sum(1 for f in self._finishing.values() if f.attempts > 0)

    def log_capture_state(self) -> dict[str, Any]:
        """For the health endpoint: failures so far, pods waiting for a retry, the last
        error, pods given up."""
        with self._lock:
            return {
                "failures": self.log_capture_failures,
                "pending": sum(1 for f in self._finishing.values() if f.attempts > 0),
                "abandoned": self.log_capture_abandoned,
                "last_error": self.log_capture_last_error,
            }

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
        self._delete_pool = ThreadPoolExecutor(8, thread_name_prefix="ketch-k8s-delete")
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
        for pool in (self._create_pool, self._delete_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._tries.clear()
            self._by_name.clear()
            # captures not done are redone by the next adopt(): their pods are still there
            self._finishing.clear()
        self._adopted = False  # nothing is tracked now: no orphans until the next adopt()
        self._watcher = self._housekeeper = None
        self._create_pool = self._delete_pool = None

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
        before_start = outcome.failed_before_start
        k = (tracked.key.dag_id, tracked.key.run_id, tracked.key.task_id)
        if not before_start:
            with self._lock:
                self._before_start_failures.pop(k, None)
        else:
            with self._lock:
                count = self._before_start_failures.get(k, 0) + 1
                self._before_start_failures[k] = count
            if count > self.kube.max_failed_before_start_retries:
                before_start = False  # the limit is reached: this one counts as a retry
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
        self._dispose(
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
                self._deleting.discard(name)
                self._captured.discard(name)
            else:
                old = self._pods.get(name)
                if old is not None and _rv(old) > _rv(pod):
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
                self._finish(pod, delete=False, reason=why)
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
                self._finish(_stub(tracked.key, tracked.name), delete=False, reason=VANISHED)

    # -- finished pods: capture, then deletion --------------------------------------

    def _dispose(
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
        self._finish(pod, delete=wanted, reason=reason)

    def _finish(self, pod: dict[str, Any], *, delete: bool, reason: str | None = None) -> None:
        """Capture the finished (or gone) pod's log once, then delete it if ``delete``.
        ``reason``: why it ended, for the rescued log's footer (default: from its status)."""
        name = pod["metadata"]["name"]
        with self._lock:
            entry = self._finishing.get(name)
            if entry is not None:  # seen again while its capture is pending
                entry.delete = entry.delete or delete
                if _rv(pod) > _rv(entry.pod):
                    entry.pod = pod
                return
            capture = self.log_capture is not None and name not in self._captured
            if capture:
                entry = _Finished(pod, reason or reasons.capture_reason(pod), delete)
                self._finishing[name] = entry
        if entry is not None:
            self._submit_capture(entry)
        elif delete:
            self._delete_async(pod)

    def _submit_capture(self, entry: _Finished) -> None:
        name = entry.pod["metadata"]["name"]
        with self._lock:
            pool = self._delete_pool
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
            first, most = self.capture_backoff
            with self._lock:
                entry.attempts += 1
                self.log_capture_failures += 1
                LOG_CAPTURE_FAILURES.inc()
                self.log_capture_last_error = f"pod {name}: {exc}"
                last = entry.attempts >= self.capture_attempts
                delay = min(most, first * 2 ** (entry.attempts - 1))
                if not last:
                    entry.due = time.monotonic() + delay
                    entry.queued = False
                else:
                    self.log_capture_abandoned += 1
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
                return
            log.error(
                "capturing the log of pod %s failed %d times, giving up%s: its try's archived"
                " log may be incomplete: %s",
                name,
                entry.attempts,
                "; deleting the pod anyway" if entry.delete else "",
                exc,
            )
        with self._lock:
            if self._finishing.get(name) is not entry:
                return  # the executor stopped meanwhile
            del self._finishing[name]
            if name in self._pods:  # (a pod gone already sends no DELETED to forget it)
                self._captured.add(name)
            if not entry.delete or name in self._deleting:
                return
            self._deleting.add(name)
        self._delete(entry.pod)

    def _retry_captures(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [f for f in self._finishing.values() if not f.queued and f.due <= now]
        for entry in due:
            self._submit_capture(entry)

    def _delete_async(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        with self._lock:
            entry = self._finishing.get(name)
            if entry is not None:  # deleted once its log is captured
                entry.delete = True
                return
            if name in self._deleting or self._delete_pool is None:
                return
            self._deleting.add(name)
            pool = self._delete_pool
        try:
            pool.submit(self._delete, pod)
        except RuntimeError:  # shutting down
            with self._lock:
                self._deleting.discard(name)

    def _delete(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        try:
            self.api.delete_pod(name)
        except KubeApiError as exc:
            log.warning("could not delete pod %s: %s", name, exc)
            with self._lock:
                self._deleting.discard(name)

    # -- housekeeping ----------------------------------------------------------------

    def _housekeeping_loop(self) -> None:
        while not self._stop.wait(_HOUSEKEEPING_INTERVAL):
            try:
                self._retry_captures()
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
            self._finish(pod or _stub(tracked.key, tracked.name), delete=True, reason=reason)

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
                if name in self._by_name or name in self._deleting:
                    continue
                cached = self._pods.get(name)
            pod = cached if cached is not None and _rv(cached) > _rv(listed) else listed
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
                    self._delete_async(pod)
                continue
            if outcome.succeeded:
                self._dispose(pod, True)
                continue
            finished = _finished_at(pod)
            expired = finished is not None and time.time() - finished > retention
            self._dispose(pod, False, force=expired or not reasons.is_started(pod))

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
                        self._finish(_stub(running.key, name), delete=False, reason=VANISHED)
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
                    latest = cached if cached is not None and _rv(cached) > _rv(pod) else pod
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
        self._delete_async(pod)
