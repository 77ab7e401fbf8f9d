"""A try's log as its pod's container log, through the Kubernetes API.

Two users:

- the **web** reads a running try's live log from its pod (:class:`PodLog`): web
  processes do not share the scheduler's disk, and the pod's stdout holds the same byte
  stream as the try's live file (the log pump echoes it there, as JSON lines with
  ``[logging] json_format``, decoded back to the plain bytes here);
- the **scheduler** rescues the log of a pod whose try did not close its archived log
  (:func:`capture_pod_log`, the Kubernetes executor's ``log_capture``), before the pod
  is deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

from ketch.executors.kubernetes import reasons
from ketch.executors.kubernetes.client import KubeApi, KubeApiError
from ketch.executors.kubernetes.pod import BASE_CONTAINER, key_of
from ketch.executors.kubernetes.reasons import killed_by_kubernetes
from ketch.logs.archive.base import LogArchive, log_key
from ketch.logs.metrics import LOG_RESCUES
from ketch.logs.rescue import add_footer, rescue_from_bytes

log = logging.getLogger(__name__)

SOURCE = "the pod's log"
STATUS_SOURCE = "the pod's status"  # the try completed its log, Kubernetes ended the try
_IDLE_TIMEOUT = 300.0  # a follow stream silent this long is reopened (if the pod still runs)
_REOPENS = 3  # reopened streams in a row that bring nothing new before following stops
_OVERLAP = 4096  # archived bytes compared with the pod's log to find where it carries on
_SEARCH = (4096, 256, 32)  # the archive's last bytes looked for in the pod's log, longest first


def _decode(data: bytes) -> bytes:
    from ketch.logs.json_lines import decode_stream

    return decode_stream(data)


def _parse_time(value: Any) -> datetime | None:
    """A Kubernetes timestamp (``2026-12-01T17:00:00Z``), or None."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class PodLog:
    """The live log of one try's pod (its ``base`` container), as plain bytes."""

    def __init__(
        self, api: KubeApi, pod_name: str, json_format: bool, *, container: str = BASE_CONTAINER
    ) -> None:
        self.api = api
        self.pod_name = pod_name
        self.json_format = json_format
        self.container = container

    def pod_exists(self) -> bool:
        return self.api.get_pod(self.pod_name) is not None

    def waiting_reason(self) -> str | None:
        """Why the pod has not started the try yet (``pod Pending for 42s; PodScheduled:
        Unschedulable: ...; events: FailedScheduling: ...``), shown to whoever follows the
        log of a queued try, as Argo shows a pending node's message. None once it started,
        or when there is no pod. A pod GET and an events list: asked every few seconds."""
        pod = self.api.get_pod(self.pod_name)
        if pod is None or reasons.is_started(pod):
            return None
        events = self.api.pod_events(self.pod_name)
        parts = reasons.pending_details(pod, events)
        created = _parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
        if created is not None:
            waited = (datetime.now(UTC) - created).total_seconds()
            parts.insert(0, f"pod Pending for {max(waited, 0):.0f}s")
        else:
            parts.insert(0, "pod Pending")
        return "; ".join(parts)

    def _running(self) -> bool:
        """The pod exists and its container has not ended (it may not have started yet)."""
        pod = self.api.get_pod(self.pod_name)
        status = (pod or {}).get("status") or {}
        if pod is None or status.get("phase") in ("Succeeded", "Failed"):
            return False
        for container in status.get("containerStatuses") or []:
            if container.get("name") == self.container:
                return not (container.get("state") or {}).get("terminated")
        return True

    def read(self) -> bytes:
        """The whole log so far. Raises ``KubeApiError`` (404: the pod is gone; 400: the
        container has not started)."""
        raw = self.api.read_pod_log(self.pod_name, container=self.container)
        return _decode(raw) if self.json_format else raw

    def follow(self, offset: int = 0) -> Generator[bytes, None, None]:
        """The log beyond byte ``offset`` of the plain stream, as it arrives, until the
        container ends or the pod is gone (also when it has not started yet: nothing).
        A stream that breaks or stays silent for long is reopened while the container
        runs; what was already yielded is not repeated."""
        sent = offset
        idle_reopens = 0
        while True:
            before = sent
            pos = 0  # plain bytes of this stream so far
            pending = b""  # JSON: the raw line not complete yet
            broke = False
            try:
                stream = self.api.stream_pod_log(
                    self.pod_name, container=self.container, read_timeout=_IDLE_TIMEOUT
                )
                try:
                    for chunk in stream:
                        if self.json_format:
                            pending += chunk
                            cut = pending.rfind(b"\n") + 1
                            if not cut:
                                continue
                            plain, pending = _decode(pending[:cut]), pending[cut:]
                        else:
                            plain = chunk
                        end = pos + len(plain)
                        if end > sent:
                            yield plain[max(0, sent - pos) :]
                            sent = end
                        pos = end
                finally:
                    stream.close()
            except KubeApiError as exc:
                if exc.status in (400, 403, 404):
                    return  # not started, not allowed, gone: the caller reads elsewhere
                broke = True
                log.debug("following the log of pod %s: %s", self.pod_name, exc)
            if not broke and not self._safe_running():
                if pending:  # the container's last line, without its newline
                    tail = _decode(pending)
                    if pos + len(tail) > sent:
                        yield tail[max(0, sent - pos) :]
                return
            idle_reopens = 0 if sent > before else idle_reopens + 1
            if idle_reopens > _REOPENS or not self._safe_running():
                return
            time.sleep(1.0)

    def _safe_running(self) -> bool:
        try:
            return self._running()
        except KubeApiError:
            return False


def _read(api: KubeApi, name: str, previous: bool) -> tuple[bytes, bool]:
    """(the container's log, whether the pod still had one): a pod that is gone or a
    container that never started has no log (b"")."""
    try:
        return api.read_pod_log(name, container=BASE_CONTAINER, previous=previous), True
    except KubeApiError as exc:
        if exc.status == 404:
            return b"", False
        if exc.status == 400:  # never started (or no previous run): nothing to read
            return b"", True
        raise


def _restart_count(pod: dict[str, Any]) -> int:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == BASE_CONTAINER:
            return int(status.get("restartCount") or 0)
    return 0


def capture_pod_log(
    api: KubeApi, archive: LogArchive, pod: dict[str, Any], reason: str, json_format: bool
) -> None:
    """Rescue a finished pod's log into the archive unless its try completed it itself.

    One archive request when the log is complete (the usual case); a pod that Kubernetes
    OOM-killed, evicted or killed at its deadline gets the footer naming ``reason`` added
    to its complete log (its log pump survived the kill). Otherwise the base
    container's log is read (the previous run's first if it restarted), decoded from
    JSON lines when ``json_format``, and :func:`~ketch.logs.rescue.rescue_from_bytes`
    archives what the archive lacks with a footer naming ``reason``. Raises
    ``KubeApiError`` / ``ArchiveError`` when the API or the archive fails: the caller
    keeps the pod and tries again."""
    key = key_of(pod)
    name = (pod.get("metadata") or {}).get("name", "")
    if key is None:
        log.debug("pod %s runs no ketch try: no log to capture", name)
        return
    try:
        archive_key = log_key(key)
    except ValueError as exc:  # UnsafeLogPath: ids that cannot name a file have no log
        log.warning("pod %s: try %s has no log to capture: %s", name, key, exc)
        return
    done = archive.completion(archive_key)
    if done is not None:
        if killed_by_kubernetes(pod):
            add_footer(archive, archive_key, done, source=STATUS_SOURCE, reason=reason)
        return
    parts = []
    present = True
    if _restart_count(pod) > 0:
        previous, present = _read(api, name, previous=True)
        parts.append(previous)
    if present:
        current, present = _read(api, name, previous=False)
        parts.append(current)
    if json_format:
        parts = [_decode(part) for part in parts]
    if not present:
        reason = f"{reason} (the pod was gone: its log could not be read)"
    content = b"".join(parts)
    if content and not _aligned(archive, archive_key, content):
        content, reason = _carry_on(archive, archive_key, content, reason)
    rescue_from_bytes(archive, archive_key, content, source=SOURCE, reason=reason)
    LOG_RESCUES.labels("pod").inc()


def _aligned(archive: LogArchive, key: str, content: bytes) -> bool:
    """Whether the pod's log starts where the archived log does (the usual case), so
    that what the archive lacks is the pod log's bytes past the archive's size (none
    when the pod's stdout is behind the archive)."""
    have = archive.size(key)
    k = min(have, len(content), _OVERLAP)
    return not k or content[:k] == archive.read(key, 0, k)


def _carry_on(archive: LogArchive, key: str, content: bytes, reason: str) -> tuple[bytes, str]:
    """The pod's log is not the archived stream from byte 0: the kubelet rotated it (only
    its newest file is served, 10 MiB by default) or something wrote to stdout before the
    log pump started. Archive what follows the archive's last bytes in it; returns the
    content and reason for :func:`rescue_from_bytes` (which then adds the footer)."""
    have = archive.size(key)
    last = archive.read(key, max(0, have - _SEARCH[0]), _SEARCH[0])
    for k in _SEARCH:
        tail = last[-k:]
        at = content.find(tail)
        if at >= 0:
            missing = content[at + len(tail) :]
            if missing:
                archive.write_chunk(key, have, missing)
            return b"", reason
    # the pod's log starts after the archive's end: keep both, and say there is a gap
    if archive.read(key, have - 1, 1) != b"\n":
        archive.write_chunk(key, have, b"\n")
        have += 1
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    note = (
        f"[{stamp}] ketch: the pod's log no longer reaches back to here (the kubelet"
        " rotated it): what the try wrote in between is missing\n"
    ).encode()
    archive.write_chunk(key, have, note + content)
    return b"", f"{reason}; part of the log is missing (see above)"
