"""The execution API client a task try uses (stdlib only).

Built on ``http.client`` with one persistent keep-alive connection per thread
and ``json``, nothing else: a try must start in milliseconds and must never pull
in httpx, pydantic or the database stack. Connection errors and 5xx answers are
retried with exponential backoff for up to ``KETCH_API_RETRY_TIMEOUT`` seconds
(default 300), so a try survives a restart of the web server under it. A 409
raises :class:`TryStateConflict`: the try was duplicated or is not in the state
the call needs, and must stop. A 401 saying the try has ended raises
:class:`TryEnded` (a ``TryStateConflict``): the try was cleared, marked,
cancelled or superseded, its token died with it, and it must stop too.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit

ENV_URL = "KETCH_EXECUTION_API_URL"
ENV_TOKEN = "KETCH_TRY_TOKEN"
ENV_RETRY_TIMEOUT = "KETCH_API_RETRY_TIMEOUT"
DEFAULT_RETRY_TIMEOUT = 300.0
_MAX_BACKOFF = 5.0
# How the execution API's 401 for a token whose try has ended begins (the server
# imports it from here: this module is the light one both sides can import).
TRY_ENDED = "try has ended"


class ExecutionApiError(Exception):
    """The execution API refused a call (4xx) or stayed unreachable past the retry timeout."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"{status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


class TryStateConflict(ExecutionApiError):
    """409: the task instance is not in the state this try expects; the try must stop."""


class TryEnded(TryStateConflict):
    """401 ``try has ended``: the try's token no longer works because the try is over
    (cleared, marked, cancelled, failed, superseded); the try must stop."""


class _Transient(Exception):
    """A failure worth retrying (connection trouble, 5xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        # The server's Retry-After: the web answers 503 while its database is down and
        # says when to ask again, so a try catches up within a second of its return
        # instead of sleeping out a back-off grown while the server was unreachable.
        self.retry_after = retry_after


def _detail(raw: bytes) -> str:
    try:
        detail = json.loads(raw).get("detail", "")
    except (ValueError, AttributeError):
        return raw.decode(errors="replace")[:500]
    return detail if isinstance(detail, str) else json.dumps(detail)


def _retry_after(response: http.client.HTTPResponse) -> float | None:
    """Retry-After in seconds (the delta form; ketch's web never sends a date)."""
    try:
        return max(0.0, float(response.getheader("Retry-After") or ""))
    except ValueError:
        return None


class ExecutionApiClient:
    """Calls about one try, authenticated by its token."""

    def __init__(self, base_url: str, token: str, *, retry_timeout: float = DEFAULT_RETRY_TIMEOUT):
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"execution API URL must be http(s)://host[:port]/path: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.retry_timeout = retry_timeout
        self._local = threading.local()  # http.client connections are not thread-safe

    @classmethod
    def from_env(cls) -> ExecutionApiClient:
        url = os.environ.get(ENV_URL)
        token = os.environ.get(ENV_TOKEN)
        if not url or not token:
            raise ExecutionApiError(None, f"{ENV_URL} and {ENV_TOKEN} must be set for a task try")
        timeout = float(os.environ.get(ENV_RETRY_TIMEOUT, DEFAULT_RETRY_TIMEOUT))
        return cls(url, token, retry_timeout=timeout)

    # -- the calls -------------------------------------------------------------------

    def start(self, pid: int, hostname: str) -> dict[str, Any]:
        result = self._call("POST", "/try/start", {"pid": pid, "hostname": hostname})
        assert isinstance(result, dict)
        return result

    def heartbeat(self) -> None:
        self._call("POST", "/try/heartbeat", {})

    def xcom(self, task_id: str, key: str = "return_value", map_index: int | None = None) -> Any:
        """The stored value (of one instance of a mapped task when ``map_index`` is given);
        ``KeyError`` when there is none."""
        path = f"/try/xcom/{quote(task_id, safe='')}?key={quote(key, safe='')}"
        if map_index is not None:
            path += f"&map_index={int(map_index)}"
        try:
            result = self._call("GET", path, None)
        except ExecutionApiError as exc:
            if exc.status == 404:
                raise KeyError(f"no XCom {key!r} of task {task_id!r}") from exc
            raise
        return result["value"]

    def finish(
        self,
        state: str,
        *,
        error: str | None = None,
        return_value: Any = None,
        has_return_value: bool = False,
        follow_task_ids: list[str] | None = None,
        xcoms: dict[str, Any] | None = None,
        retry: bool = True,
        reschedule_date: str | None = None,
        rendered_map_index: str | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "state": state,
            "error": error,
            "return_value": return_value,
            "has_return_value": has_return_value,
            "follow_task_ids": follow_task_ids,
            "retry": retry,
        }
        if reschedule_date is not None:
            body["reschedule_date"] = reschedule_date
        if xcoms:  # sent only when there are some: the body stays what older servers take
            body["xcoms"] = xcoms
        if rendered_map_index is not None:  # likewise, only with a map_index_template
            body["rendered_map_index"] = rendered_map_index
        self._call("POST", "/try/finish", body)

    def get_variable(self, key: str) -> dict[str, Any]:
        """``{key, value, is_sensitive}``; ``KeyError`` when there is no such variable."""
        try:
            result = self._call("GET", f"/variables/{quote(key, safe='')}", None)
        except ExecutionApiError as exc:
            if exc.status == 404:
                raise KeyError(f"variable {key!r} does not exist") from exc
            raise
        assert isinstance(result, dict)
        return result

    def get_connection(self, conn_id: str) -> dict[str, Any]:
        """The connection's fields; ``KeyError`` when there is no such connection."""
        try:
            result = self._call("GET", f"/connections/{quote(conn_id, safe='')}", None)
        except ExecutionApiError as exc:
            if exc.status == 404:
                raise KeyError(f"connection {conn_id!r} does not exist") from exc
            raise
        assert isinstance(result, dict)
        return result

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- transport -------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=60)
            self._local.conn = conn
        return conn

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        deadline = time.monotonic() + self.retry_timeout
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(method, self._prefix + path, payload)
            except _Transient as exc:
                self.close()
                # A kept-alive connection the server closed fails once; retry at once.
                if attempt == 1 and isinstance(exc.__cause__, http.client.RemoteDisconnected):
                    continue
                if time.monotonic() + delay > deadline:
                    raise ExecutionApiError(
                        None, f"execution API unreachable for {self.retry_timeout:.0f}s: {exc}"
                    ) from exc
                time.sleep(delay if exc.retry_after is None else min(delay, exc.retry_after))
                delay = min(delay * 2, _MAX_BACKOFF)

    def _once(self, method: str, path: str, payload: bytes | None) -> Any:
        conn = self._connection()
        try:
            conn.request(method, path, body=payload, headers=self._headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        status = response.status
        if status >= 500:
            raise _Transient(f"HTTP {status}: {_detail(raw)}", _retry_after(response))
        if status == 409:
            raise TryStateConflict(status, _detail(raw))
        if status == 401:
            detail = _detail(raw)
            if detail.startswith(TRY_ENDED):
                raise TryEnded(status, detail)
            raise ExecutionApiError(status, detail)
        if status >= 400:
            raise ExecutionApiError(status, _detail(raw))
        return json.loads(raw) if raw else None


_task_client: ExecutionApiClient | None = None
_task_client_lock = threading.Lock()


def task_client() -> ExecutionApiClient:
    """The client of the running try (from its environment), for task-side helpers
    such as ``Variable.get``; ``ExecutionApiError`` outside a task try."""
    global _task_client
    with _task_client_lock:
        if _task_client is None:
            _task_client = ExecutionApiClient.from_env()
        return _task_client


@contextmanager
def in_process_try(url: str, token: str) -> Iterator[None]:
    """The try environment of a try run inside this process (``ketch dags test``), for the
    length of the block: a real try gets ``KETCH_EXECUTION_API_URL`` and
    ``KETCH_TRY_TOKEN`` from its executor, and ``Variable.get``, ``Connection.get`` and
    templates read through them. The cached client is dropped at both ends, since each
    try has its own token and a token stops working when its try ends."""
    global _task_client
    saved = {name: os.environ.get(name) for name in (ENV_URL, ENV_TOKEN)}
    os.environ[ENV_URL], os.environ[ENV_TOKEN] = url, token
    with _task_client_lock:
        _task_client = None
    try:
        yield
    finally:
        with _task_client_lock:
            _task_client = None
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
