"""The pod watch: one thread, one watch on ketch's label selector.

It lists once (``on_sync`` gets the full list), then watches from the list's
resourceVersion, keeping the latest version it saw (BOOKMARK events included). A dropped
connection or a server timeout resumes from that version; 410 Gone (too old) lists again.
A watch that delivered events or stayed open a while is followed by the next one at once.
One that fails, or ends at once without an event (even without an error), is reopened after
a delay growing exponentially from 0.1 s to 5 s, reset once a watch is healthy again; such a
streak logs one warning. Nothing ends the thread but ``stop()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ketch.executors.kubernetes.client import KubeApi, KubeApiError

log = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 300
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
# a watch that delivered an event, or stayed open this long, was healthy: the next one opens
# at once and the backoff starts again from BACKOFF_MIN (so at most about one reopen per
# HEALTHY_SECONDS without events, whatever the server does)
HEALTHY_SECONDS = 1.0


class PodWatcher:
    def __init__(
        self,
        api: KubeApi,
        selector: str,
        on_event: Callable[[str, dict[str, Any]], None],
        on_sync: Callable[[list[dict[str, Any]]], None],
        *,
        timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
    ) -> None:
        self.api = api
        self.selector = selector
        self.on_event = on_event
        self.on_sync = on_sync
        self.timeout_seconds = timeout_seconds
        self.resource_version: str | None = None
        self.relists = 0
        self.attempts = 0  # list-and-watch attempts that ended (or failed)
        self.backoffs = 0  # of which were followed by a backoff delay
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ketch-k8s-watch", daemon=True)
        self.synced = threading.Event()
        self._resp: Any = None

    def _opened(self, resp: Any) -> None:
        self._resp = resp

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()  # unblocks the read on the watch thread
            except Exception:
                log.debug("closing the watch connection failed", exc_info=True)
        self._thread.join(timeout=2)

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        streak = 0  # watches in a row that failed or ended at once without an event
        while not self._stop.is_set():
            opened_at: float | None = None
            delivered = 0
            problem: str | None = None
            failed = False  # an error, not a clean end of the stream
            try:
                if self.resource_version is None:
                    pods, rv = self.api.list_pods(self.selector)
                    self.relists += 1
                    self.on_sync(pods)
                    self.resource_version = rv
                    self.synced.set()
                opened_at = time.monotonic()
                delivered = self._watch_once()
                if self.resource_version is None:
                    problem = "the watch's resourceVersion is too old (410 Gone)"
                else:
                    problem = "the watch ended at once without events"
            except KubeApiError as exc:
                if exc.status == 410:
                    self.resource_version = None
                    problem = "the watch's resourceVersion is too old (410 Gone)"
                else:
                    problem, failed = f"pod watch interrupted ({exc})", True
            except Exception as exc:
                problem, failed = f"pod watch interrupted ({exc})", True
            if self._stop.is_set():
                return
            self.attempts += 1
            lived = time.monotonic() - opened_at if opened_at is not None else 0.0
            if delivered or lived >= HEALTHY_SECONDS:
                # it worked for a while: resume (or relist) at once, as after a server timeout
                if streak:
                    log.info("pod watch is healthy again after %d failed attempt(s)", streak)
                elif failed:
                    log.info("%s after %.0fs; resuming", problem, lived)
                backoff, streak = BACKOFF_MIN, 0
                continue
            # a watch that fails, or ends without an event as soon as it opened, is reopened
            # after a growing delay (never in a hot loop); one warning per streak
            streak += 1
            self.backoffs += 1
            if streak == 1:
                log.warning("%s; reopening with backoff (up to %.0fs)", problem, BACKOFF_MAX)
            else:
                log.debug("%s (%d in a row); reopening in %.1fs", problem, streak, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _watch_once(self) -> int:
        """One watch connection, until it ends; returns how many events it delivered."""
        assert self.resource_version is not None
        delivered = 0
        for event in self.api.watch_pods(
            self.selector, self.resource_version, self.timeout_seconds, self._opened
        ):
            if self._stop.is_set():
                return delivered
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    log.info("pod watch: resourceVersion too old (410 Gone); listing again")
                    self.resource_version = None
                    return delivered
                raise RuntimeError(f"watch error: {obj.get('message') or obj}")
            delivered += 1
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = rv
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                try:
                    self.on_event(str(kind), obj)
                except Exception:
                    log.exception("handling a pod watch event failed")
        return delivered
