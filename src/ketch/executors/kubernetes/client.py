"""Kubernetes API access: client setup (in-cluster or kubeconfig), a token-bucket QPS/burst
limiter shared by every request, bounded retries of transient errors, and clear RBAC errors.

Objects are exchanged as plain dicts (``_preload_content=False``): no model (de)serialisation
on the hot path, and the watch handles exactly what the API server sent.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ketch.config import KubernetesSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)
TRANSIENT_CODES = {0, 408, 429, 500, 502, 503, 504}


class TokenBucket:
    """Client-side rate limit: ``qps`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.qps
            time.sleep(wait)


class KubeApiError(RuntimeError):
    """A Kubernetes API request failed for good; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _describe(
    exc: ApiException, verb: str, resource: str, namespace: str, who: str = "the scheduler"
) -> KubeApiError:
    status = int(exc.status or 0)
    message = ""
    try:
        message = json.loads(exc.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = str(exc.body or exc.reason or "")
    if status == 403:
        return KubeApiError(
            403,
            f'RBAC: {who} may not "{verb}" "{resource}" in namespace "{namespace}" '
            f"(grant the verb {verb} on {resource}): {message}",
        )
    return KubeApiError(status, f"{verb} {resource}: HTTP {status} {exc.reason or ''}: {message}")


def _log_error(exc: KubeApiError, name: str, container: str, previous: bool) -> KubeApiError:
    which = f"the previous {container} container" if previous else f"container {container}"
    if exc.status == 404:
        return KubeApiError(404, f"the log of pod {name}: the pod is gone ({exc})")
    if exc.status == 400:
        return KubeApiError(400, f"the log of {which} of pod {name} is not available: {exc}")
    return KubeApiError(exc.status, f"the log of {which} of pod {name}: {exc}")


def _json_body(resp: Any) -> Any:
    data = resp.data
    return json.loads(data) if data else None


def new_api_client(settings: KubernetesSettings, pool_size: int) -> k8s.ApiClient:
    """An ApiClient for the pod's service account (``in_cluster``) or a kubeconfig."""
    configuration = k8s.Configuration()
    if settings.in_cluster:
        k8s_config.load_incluster_config(client_configuration=configuration)
    else:
        k8s_config.load_kube_config(
            config_file=str(settings.config_file) if settings.config_file else None,
            context=settings.cluster_context,
            client_configuration=configuration,
        )
    configuration.connection_pool_maxsize = pool_size
    configuration.retries = False  # we retry ourselves, under the rate limit
    return k8s.ApiClient(configuration)


class KubeApi:
    """The few calls the executor makes, rate-limited, retried, counted."""

    def __init__(
        self,
        settings: KubernetesSettings,
        api_client: k8s.ApiClient | None = None,
        *,
        retry_deadline: float = 30.0,
        who: str = "the scheduler",
    ) -> None:
        self.namespace = settings.namespace
        self.who = who  # whose service account, in RBAC errors
        self.api_client = api_client or new_api_client(
            settings, settings.worker_pods_creation_batch_size + 8
        )
        self.core = k8s.CoreV1Api(self.api_client)
        self.bucket = TokenBucket(settings.api_qps, settings.api_burst)
        self.retry_deadline = retry_deadline
        self.requests: dict[str, int] = {}
        self._count_lock = threading.Lock()

    def _count(self, verb: str) -> None:
        with self._count_lock:
            self.requests[verb] = self.requests.get(verb, 0) + 1

    def call(
        self,
        verb: str,
        resource: str,
        fn: Callable[[], Any],
        *,
        ok_statuses: frozenset[int] = frozenset(),
        stop: threading.Event | None = None,
        body: Callable[[Any], Any] = _json_body,
    ) -> tuple[int, Any]:
        """Run ``fn`` under the rate limit; retry transient failures with backoff until the
        deadline. Returns (status, ``body(response)``: by default the decoded JSON body); a
        status in ``ok_statuses`` (e.g. 409 on create) is returned (with None) instead of
        raised."""
        deadline = time.monotonic() + self.retry_deadline
        delay = 0.05
        while True:
            self.bucket.acquire()
            self._count(verb)
            try:
                resp = fn()
                return int(resp.status), body(resp)
            except ApiException as exc:
                status = int(exc.status or 0)
                if status in ok_statuses:
                    return status, None
                if status not in TRANSIENT_CODES:
                    raise _describe(exc, verb, resource, self.namespace, self.who) from exc
                error = _describe(exc, verb, resource, self.namespace, self.who)
            except (HTTPError, OSError) as exc:
                error = KubeApiError(0, f"{verb} {resource}: no answer from the API server: {exc}")
            if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                raise error
            log.debug("retrying after %s", error)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    # -- the calls ------------------------------------------------------------------------

    def create_pod(self, body: dict[str, Any]) -> bool:
        """Create the pod; False when it already exists (409: launched before)."""
        status, _ = self.call(
            "create",
            "pods",
            lambda: self.core.create_namespaced_pod(
                self.namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            ),
            ok_statuses=frozenset({409}),
        )
        return status != 409

    def delete_pod(self, name: str, grace_period_seconds: int | None = None) -> bool:
        """Delete the pod; False when it was already gone."""
        status, _ = self.call(
            "delete",
            "pods",
            lambda: self.core.delete_namespaced_pod(
                name,
                self.namespace,
                grace_period_seconds=grace_period_seconds,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            ),
            ok_statuses=frozenset({404}),
        )
        return status != 404

    def list_pods(self, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        """Pods matching the selector and the list's resourceVersion."""
        _, body = self.call(
            "list",
            "pods",
            lambda: self.core.list_namespaced_pod(
                self.namespace,
                label_selector=label_selector,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )
        return list(body.get("items") or []), str(body["metadata"].get("resourceVersion", ""))

    def pod_events(self, name: str) -> list[dict[str, Any]]:
        _, body = self.call(
            "list",
            "events",
            lambda: self.core.list_namespaced_event(
                self.namespace,
                field_selector=f"involvedObject.name={name}",
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )
        return list(body.get("items") or [])

    def get_pod(self, name: str) -> dict[str, Any] | None:
        """The pod as the API server has it now; None when it does not exist."""
        status, body = self.call(
            "get",
            "pods",
            lambda: self.core.read_namespaced_pod(
                name, self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            ),
            ok_statuses=frozenset({404}),
        )
        return None if status == 404 else body

    def read_pod_log(
        self,
        name: str,
        *,
        container: str = "base",
        previous: bool = False,
        limit_bytes: int | None = None,
    ) -> bytes:
        """A container's log so far, the exact bytes (``previous``: its run before its last
        restart). Raises :class:`KubeApiError`: 404 when the pod is gone, 400 when the
        container has not started (or has no previous run)."""
        data = self._pod_log_request(
            name,
            container,
            previous,
            lambda resp: bytes(resp.data or b""),
            previous=previous or None,
            limit_bytes=limit_bytes,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return bytes(data)

    def stream_pod_log(
        self, name: str, *, container: str = "base", read_timeout: float | None = None
    ) -> Generator[bytes, None, None]:
        """Follow a container's log: its bytes so far, then new bytes as they arrive (raw
        chunks, as the server sends them) until the container ends. The request is made at
        the first ``next()``; closing the generator closes the connection.
        ``read_timeout``: seconds without a byte before giving up (None: as long as the
        container runs).

        Opening the stream is retried as every call is; an interrupted stream raises
        :class:`KubeApiError` with status 0 and the caller decides whether to reopen it."""
        resp = self._pod_log_request(
            name,
            container,
            False,
            lambda resp: resp,  # read as it arrives, below
            follow=True,
            _request_timeout=(REQUEST_TIMEOUT[0], read_timeout),
        )
        try:
            for chunk in resp.stream(65536, decode_content=True):
                if chunk:
                    yield bytes(chunk)
        except (HTTPError, OSError) as exc:
            raise KubeApiError(
                0, f"get pods/log: the log stream of pod {name} broke: {exc}"
            ) from exc
        finally:
            resp.close()
            resp.release_conn()

    def _pod_log_request(
        self,
        name: str,
        container: str,
        of_previous: bool,
        body: Callable[[Any], Any],
        **params: Any,
    ) -> Any:
        """One ``GET pods/log`` (retried as every call), its errors said for a log."""
        try:
            _, result = self.call(
                "get",
                "pods/log",
                lambda: self.core.read_namespaced_pod_log(
                    name,
                    self.namespace,
                    container=container,
                    _preload_content=False,
                    **params,
                ),
                body=body,
            )
        except KubeApiError as exc:
            raise _log_error(exc, name, container, of_previous) from exc
        return result

    def watch_pods(
        self,
        label_selector: str,
        resource_version: str,
        timeout_seconds: int,
        on_open: Callable[[Any], None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One watch connection: yields decoded watch events until the server ends it."""
        from kubernetes.watch.watch import iter_resp_lines

        self.bucket.acquire()
        self._count("watch")
        try:
            resp = self.core.list_namespaced_pod(
                self.namespace,
                label_selector=label_selector,
                resource_version=resource_version,
                watch=True,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _preload_content=False,
                _request_timeout=(REQUEST_TIMEOUT[0], timeout_seconds + 30),
            )
        except ApiException as exc:
            raise _describe(exc, "watch", "pods", self.namespace, self.who) from exc
        if on_open is not None:
            on_open(resp)  # lets the owner close the connection to stop at once
        try:
            for line in iter_resp_lines(resp):
                if line:
                    yield json.loads(line)
        finally:
            resp.close()
            resp.release_conn()

    def close(self) -> None:
        self.api_client.close()
