"""The pod watch: one thread, one watch on ketch's label selector.

It lists once (``on_sync`` gets the full list), then watches from the list's
resourceVersion, keeping the latest version it saw (BOOKMARK events included). A dropped
connection or a server timeout resumes from that version; 410 Gone (too old) lists again.
Errors back off exponentially (at most 5 s) and never end the thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ketch.executors.kubernetes.client import KubeApi, KubeApiError

log = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 300


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
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    pods, rv = self.api.list_pods(self.selector)
                    self.relists += 1
                    self.on_sync(pods)
                    self.resource_version = rv
                    self.synced.set()
                self._watch_once()
                backoff = 0.1
            except KubeApiError as exc:
                if exc.status == 410:
                    self.resource_version = None
                    continue
                if self._stop.is_set():
                    return
                log.warning("pod watch interrupted (%s); resuming in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("pod watch interrupted (%s); resuming in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _watch_once(self) -> None:
        assert self.resource_version is not None
        for event in self.api.watch_pods(
            self.selector, self.resource_version, self.timeout_seconds, self._opened
        ):
            if self._stop.is_set():
                return
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    log.info("pod watch: resourceVersion too old (410 Gone); listing again")
                    self.resource_version = None
                    return
                raise RuntimeError(f"watch error: {obj.get('message') or obj}")
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = rv
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                try:
                    self.on_event(str(kind), obj)
                except Exception:
                    log.exception("handling a pod watch event failed")
