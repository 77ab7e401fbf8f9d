"""What a server process needs to read logs: the archive, and pods on Kubernetes.

Built once per process (the web app, the CLI) from the settings: the archive from
``[logging]``, and with ``[core] executor = "kubernetes"`` a Kubernetes API client for
reading running pods' logs (the web's service account needs ``get`` on ``pods`` and
``pods/log``; without it, running tries are read from the archive's newest chunks).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ketch.config import Settings
from ketch.executors.base import TryKey
from ketch.logs.archive.base import LogArchive
from ketch.logs.reader import LogReader

log = logging.getLogger(__name__)

STATUS_TTL = 30.0


class LogAccess:
    """The archive and the pod-log factory of one process (thread-safe, lazy)."""

    def __init__(self, settings: Settings, archive: LogArchive | None = None) -> None:
        self.settings = settings
        self._archive = archive
        self._kube: Any = None
        self._lock = threading.Lock()
        self._status: tuple[float, str] | None = None

    @property
    def archive(self) -> LogArchive:
        with self._lock:
            if self._archive is None:
                from ketch.logs.archive import open_archive

                lookup = _db_connection(self.settings)
                self._archive = open_archive(self.settings, connection_lookup=lookup)
            return self._archive

    def archive_status(self) -> str:
        """'ok' or what is wrong with the archive; a check at most every 30 s."""
        import time

        from ketch.logs.archive.base import ArchiveError

        now = time.monotonic()
        if self._status is not None and now - self._status[0] < STATUS_TTL:
            return self._status[1]
        try:
            self.archive.check()
            status = "ok"
        except ArchiveError as exc:
            status = str(exc)
        except Exception as exc:
            status = f"{type(exc).__name__}: {exc}"
        self._status = (now, status)
        return status

    def reader(self) -> LogReader:
        pod_logs = self._pod_log if self.settings.core.executor == "kubernetes" else None
        return LogReader(self.settings, self.archive, pod_logs)

    def _kube_api(self) -> Any:
        with self._lock:
            if self._kube is None:
                from ketch.executors.kubernetes.client import KubeApi

                self._kube = KubeApi(self.settings.kubernetes, retry_deadline=5.0)
            return self._kube

    def _pod_log(self, key: TryKey) -> Any:
        from ketch.executors.kubernetes.pod import pod_name
        from ketch.logs.pod_log import PodLog

        pod_log = PodLog(self._kube_api(), pod_name(key), self.settings.logging.json_format)
        return pod_log if pod_log.pod_exists() else None


def _db_connection(settings: Settings) -> Any:
    """``remote_log_conn_id`` read from ketch's own database (servers have it)."""
    if not settings.logging.remote_log_conn_id:
        return None

    def lookup(conn_id: str) -> dict[str, Any]:
        from ketch.db.engine import get_engine, session_scope
        from ketch.variables.store import get_connection

        with session_scope(get_engine(settings.database_url)) as session:
            conn = get_connection(session, settings, conn_id)
        return {"login": conn.login, "password": conn.password, "extra": conn.extra_dejson}

    return lookup
