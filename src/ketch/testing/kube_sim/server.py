"""The HTTP front of the simulator: Kubernetes REST paths over a threaded stdlib server."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ketch.testing.kube_sim.cluster import Cluster
from ketch.testing.kube_sim.errors import ApiError
from ketch.testing.kube_sim.runtime import LogBuffer, now_rfc3339
from ketch.testing.kube_sim.selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)

KUBE_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kube-sim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_POD_VERBS = ["create", "delete", "get", "list", "watch"]
API_RESOURCES = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        {
            "name": "pods",
            "singularName": "pod",
            "namespaced": True,
            "kind": "Pod",
            "verbs": _POD_VERBS,
            "shortNames": ["po"],
            "categories": ["all"],
        },
        {
            "name": "pods/log",
            "singularName": "",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["get"],
        },
        {
            "name": "pods/status",
            "singularName": "",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["get"],
        },
        {
            "name": "events",
            "singularName": "event",
            "namespaced": True,
            "kind": "Event",
            "verbs": ["list"],
            "shortNames": ["ev"],
        },
        {
            "name": "namespaces",
            "singularName": "namespace",
            "namespaced": False,
            "kind": "Namespace",
            "verbs": ["get"],
            "shortNames": ["ns"],
        },
    ],
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    cluster: Cluster
    bookmark_interval: float


def _age(ts: str) -> str:
    try:
        created = time.mktime(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except (ValueError, TypeError):
        return "<unknown>"
    secs = max(0, int(time.time() - created))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h"


def pod_table(pods: list[dict[str, Any]], rv: int) -> dict[str, Any]:
    """The server-side printing kubectl asks for (``as=Table``)."""
    rows = []
    for pod in pods:
        statuses = pod.get("status", {}).get("containerStatuses") or []
        ready = sum(1 for s in statuses if s.get("ready"))
        total = len(pod.get("spec", {}).get("containers") or [])
        status = pod.get("status", {}).get("reason") or pod.get("status", {}).get(
            "phase", "Pending"
        )
        for s in statuses:
            waiting = s.get("state", {}).get("waiting")
            term = s.get("state", {}).get("terminated")
            if waiting and waiting.get("reason"):
                status = waiting["reason"]
            elif term and term.get("reason") and status not in ("Evicted",):
                status = term["reason"]
        if pod["metadata"].get("deletionTimestamp"):
            status = "Terminating"
        rows.append(
            {
                "cells": [
                    pod["metadata"]["name"],
                    f"{ready}/{total}",
                    status,
                    sum(int(s.get("restartCount") or 0) for s in statuses),
                    _age(pod["metadata"].get("creationTimestamp", "")),
                ],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": pod["metadata"],
                },
            }
        )
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": str(rv)},
        "columnDefinitions": [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "description": "Name",
                "priority": 0,
            },
            {
                "name": "Ready",
                "type": "string",
                "format": "",
                "description": "ready containers",
                "priority": 0,
            },
            {
                "name": "Status",
                "type": "string",
                "format": "",
                "description": "status",
                "priority": 0,
            },
            {
                "name": "Restarts",
                "type": "string",
                "format": "",
                "description": "restarts",
                "priority": 0,
            },
            {"name": "Age", "type": "string", "format": "", "description": "age", "priority": 0},
        ],
        "rows": rows,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "kube-sim"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def cluster(self) -> Cluster:
        return self.server.cluster

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the request body is not valid JSON: {exc}") from exc

    def _send(
        self, code: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json", headers)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.flush()

    def _end_stream(self) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def _abort(self) -> None:
        """Close the connection abruptly (no answer / truncated stream)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    # -- routing ------------------------------------------------------------------------------

    def _route(
        self, parts: list[str], query: dict[str, str]
    ) -> tuple[str, str, str | None, str | None]:
        """(verb, resource, namespace, name) for an API path, or raise 404."""
        method = self.command
        if parts[:2] != ["api", "v1"]:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rest = parts[2:]
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace = rest[1]
            rest = rest[2:]
            if not rest:
                return ("get", "namespaces", None, namespace)
        if not rest or rest[0] not in ("pods", "events"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resource = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if (
            len(rest) > 3
            or (sub and sub not in ("log", "status"))
            or (resource == "events" and name)
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub:
            resource = f"{resource}/{sub}"
        watch = query.get("watch", "").lower() in ("true", "1")
        if method == "GET":
            verb = "get" if name else ("watch" if watch else "list")
        elif method == "POST" and not name and namespace:
            verb = "create"
        elif method == "DELETE" and name and not sub:
            verb = "delete"
        else:
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"the server does not allow this method on the requested resource ({method} {resource})",
            )
        if resource == "events" and verb != "list":
            raise ApiError(405, "MethodNotAllowed", "the simulator only lists events")
        return verb, resource, namespace, name

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        parts = [p for p in url.path.split("/") if p]
        try:
            if parts and parts[0] == "_sim":
                self._admin(parts[1:])
                return
            faults = self.cluster.faults
            if faults.latency_seconds > 0:
                time.sleep(faults.latency_seconds)
            if self._discovery(parts):
                return
            verb, resource, namespace, name = self._route(parts, query)
            with self.cluster.cond:
                self.cluster.request_count[verb] += 1
                self.cluster.request_log.append((verb, resource))
            body = self._body() if self.command in ("POST", "PUT", "PATCH", "DELETE") else None
            if f"{verb} {resource}" in faults.forbidden:
                ns_part = (
                    f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
                )
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{resource.split("/")[0]} is forbidden: User "system:serviceaccount:{namespace or "default"}:ketch" cannot {verb} resource "{resource}" in API group ""{ns_part}',
                    {"kind": resource},
                )
            timeout_after = False
            faulty = not faults.api_fault_verbs or verb in faults.api_fault_verbs
            if faulty and self.cluster.chance(faults.api_timeout_rate):
                if faults.api_timeout_after_commit and verb in ("create", "delete"):
                    timeout_after = True
                else:
                    time.sleep(faults.api_timeout_seconds)
                    self._abort()
                    return
            if faulty and self.cluster.chance(faults.api_error_rate):
                code = self.cluster.pick(faults.api_error_codes)
                reason = {
                    429: "TooManyRequests",
                    500: "InternalError",
                    503: "ServiceUnavailable",
                    504: "Timeout",
                }.get(code, "InternalError")
                err = ApiError(code, reason, f"injected fault: {reason}")
                if code == 429:
                    err.details = {"retryAfterSeconds": 1}
                self._json(code, err.status(), {"Retry-After": "1"} if code == 429 else None)
                return
            self._serve(verb, resource, namespace, name, query, body, timeout_after)
        except ApiError as exc:
            with contextlib.suppress(OSError):
                self._json(exc.code, exc.status())
        except SelectorError as exc:
            with contextlib.suppress(OSError):
                self._json(400, ApiError(400, "BadRequest", str(exc)).status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # a malformed request (bad number, body of the wrong shape): a BadRequest, not a crash
            with contextlib.suppress(OSError):
                self._json(400, ApiError(400, "BadRequest", f"bad request: {exc!r}").status())

    def _discovery(self, parts: list[str]) -> bool:
        path = "/" + "/".join(parts)
        if path == "/version":
            self._json(200, KUBE_VERSION)
        elif path == "/api":
            host, port = str(self.server.server_address[0]), self.server.server_address[1]
            self._json(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{host}:{port}"}
                    ],
                },
            )
        elif path == "/api/v1":
            self._json(200, API_RESOURCES)
        elif path == "/apis":
            self._json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        elif path in ("/healthz", "/livez", "/readyz"):
            self._send(200, b"ok", "text/plain; charset=utf-8")
        else:
            return False
        return True

    # -- API ----------------------------------------------------------------------------------

    def _serve(
        self,
        verb: str,
        resource: str,
        namespace: str | None,
        name: str | None,
        query: dict[str, str],
        body: Any,
        timeout_after: bool,
    ) -> None:
        cluster = self.cluster
        if resource == "namespaces":
            assert name is not None
            self._json(
                200,
                {
                    "kind": "Namespace",
                    "apiVersion": "v1",
                    "metadata": {"name": name, "uid": name, "creationTimestamp": now_rfc3339()},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                },
            )
            return
        if resource == "events":
            self._list(cluster.events, namespace, query, "EventList")
            return
        if verb == "create":
            assert namespace is not None
            pod = cluster.create_pod(namespace, body, dry_run="dryRun" in query)
            if timeout_after:
                time.sleep(cluster.faults.api_timeout_seconds)
                self._abort()
                return
            self._json(201, pod)
            return
        if verb == "delete":
            assert namespace is not None and name is not None
            grace: int | None = None
            if isinstance(body, dict) and body.get("gracePeriodSeconds") is not None:
                grace = int(body["gracePeriodSeconds"])
            if "gracePeriodSeconds" in query:
                grace = int(query["gracePeriodSeconds"])
            pod = cluster.delete_pod(namespace, name, grace)
            if timeout_after:
                time.sleep(cluster.faults.api_timeout_seconds)
                self._abort()
                return
            self._json(200, pod)
            return
        if verb == "get":
            assert namespace is not None and name is not None
            if resource == "pods/log":
                self._log(namespace, name, query)
            else:
                self._json(200, cluster.get_pod(namespace, name))
            return
        if verb == "list":
            self._list(cluster.pods, namespace, query, "PodList")
            return
        self._watch(namespace, query)

    def _list(
        self,
        store: dict[tuple[str, str], dict[str, Any]],
        namespace: str | None,
        query: dict[str, str],
        kind: str,
    ) -> None:
        label_ok = parse_label_selector(query.get("labelSelector"))
        field_ok = parse_field_selector(query.get("fieldSelector"))
        with self.cluster.cond:
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in store.items()
                if (namespace is None or ns == namespace)
                and label_ok((obj.get("metadata") or {}).get("labels") or {})
                and field_ok(obj)
            ]
            rv = self.cluster.rv
        items.sort(
            key=lambda o: (
                o["metadata"]["namespace"],
                int(o["metadata"]["resourceVersion"])
                if kind == "EventList"
                else o["metadata"]["name"],
            )
        )
        if kind == "PodList" and "as=Table" in (self.headers.get("Accept") or ""):
            self._json(200, pod_table(items, rv))
            return
        item_kind = kind[: -len("List")]
        for item in items:
            item.setdefault("kind", item_kind)
            item.setdefault("apiVersion", "v1")
        self._json(
            200,
            {
                "kind": kind,
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    def _watch(self, namespace: str | None, query: dict[str, str]) -> None:
        cluster = self.cluster
        label_ok = parse_label_selector(query.get("labelSelector"))
        field_ok = parse_field_selector(query.get("fieldSelector"))
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or 1800)
        rv_text = query.get("resourceVersion", "")
        start = time.monotonic()
        deadline = start + timeout
        table = "as=Table" in (self.headers.get("Accept") or "")

        def matches(ns: str, obj: dict[str, Any]) -> bool:
            return (
                (namespace is None or ns == namespace)
                and label_ok((obj.get("metadata") or {}).get("labels") or {})
                and field_ok(obj)
            )

        def encode(event_type: str, obj: dict[str, Any]) -> bytes:
            if table and event_type != "ERROR" and event_type != "BOOKMARK":
                obj = pod_table([obj], int(obj["metadata"]["resourceVersion"]))
            return json.dumps({"type": event_type, "object": obj}).encode() + b"\n"

        pending: list[bytes] = []
        with cluster.cond:
            generation = cluster.watch_generation
            if rv_text in ("", "0"):
                for (ns, _), pod in sorted(cluster.pods.items()):
                    if matches(ns, pod):
                        pending.append(encode("ADDED", pod))
                last = cluster.rv
            else:
                try:
                    last = int(rv_text)
                except ValueError:
                    raise ApiError(
                        400, "BadRequest", f"invalid resource version {rv_text!r}"
                    ) from None
                if last < cluster.compacted_rv:
                    gone = ApiError(
                        410, "Expired", f"too old resource version: {last} ({cluster.compacted_rv})"
                    ).status()
                    pending.append(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                    last = -1
        self._start_stream("application/json")
        try:
            for data in pending:
                self._chunk(data)
            if last < 0:
                self._end_stream()
                return
            next_bookmark = time.monotonic() + self.server.bookmark_interval
            while True:
                with cluster.cond:
                    drop_after = cluster.faults.watch_drop_after_seconds
                    now = time.monotonic()
                    wait_until = min(deadline, next_bookmark if bookmarks else deadline)
                    if drop_after is not None:
                        wait_until = min(wait_until, start + drop_after)
                    if (
                        not cluster.events_after(last)
                        and not cluster.closed
                        and cluster.watch_generation == generation
                    ):
                        cluster.cond.wait(max(0.0, wait_until - now))
                    if cluster.closed:
                        self._abort()
                        return
                    if cluster.watch_generation != generation:
                        self._abort()
                        return
                    if last < cluster.compacted_rv:
                        gone = ApiError(
                            410,
                            "Expired",
                            f"too old resource version: {last} ({cluster.compacted_rv})",
                        ).status()
                        out = [json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n"]
                        last = -1
                    else:
                        out = []
                        for rv, ns, event_type, obj in cluster.events_after(last):
                            if matches(ns, obj):
                                out.append(encode(event_type, obj))
                            last = rv
                    current = cluster.rv
                for data in out:
                    self._chunk(data)
                if last < 0:
                    self._end_stream()
                    return
                now = time.monotonic()
                if drop_after is not None and now >= start + drop_after:
                    self._abort()
                    return
                if now >= deadline:
                    self._end_stream()
                    return
                if bookmarks and now >= next_bookmark:
                    self._chunk(
                        json.dumps(
                            {
                                "type": "BOOKMARK",
                                "object": {
                                    "kind": "Pod",
                                    "apiVersion": "v1",
                                    "metadata": {"resourceVersion": str(current)},
                                },
                            }
                        ).encode()
                        + b"\n"
                    )
                    next_bookmark = now + self.server.bookmark_interval
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _log(self, namespace: str, name: str, query: dict[str, str]) -> None:
        cluster = self.cluster
        pod = cluster.get_pod(namespace, name)
        names = [
            c["name"] for c in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]
        ]
        container = query.get("container")
        if not container:
            main = [c["name"] for c in pod["spec"]["containers"]]
            if len(main) != 1:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(main)}]",
                )
            container = main[0]
        if container not in names:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        previous = query.get("previous", "").lower() in ("true", "1")
        with cluster.cond:
            rt = cluster.runtimes.get(pod["metadata"]["uid"])
            logs = (rt.previous_logs if previous else rt.logs) if rt else {}
            buf = logs.get(container)
        if buf is None and previous:
            raise ApiError(
                400,
                "BadRequest",
                f'previous terminated container "{container}" in pod "{name}" not found',
            )
        if buf is None:
            reason = "ContainerCreating"
            for st in (pod["status"].get("initContainerStatuses") or []) + (
                pod["status"].get("containerStatuses") or []
            ):
                if st["name"] == container and st.get("state", {}).get("waiting"):
                    reason = st["state"]["waiting"].get("reason", reason)
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: {reason}',
            )
        follow = query.get("follow", "").lower() in ("true", "1")
        tail = int(query["tailLines"]) if query.get("tailLines") else None
        limit = int(query["limitBytes"]) if query.get("limitBytes") else None
        with buf.cond:
            data = bytes(buf.data)
        if tail is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail > 0 else b""
        if limit is not None:
            data = data[:limit]
        if not follow:
            self._send(200, data, "text/plain")
            return
        self._start_stream("text/plain")
        pos = len(buf.data) if tail is not None else len(data)
        try:
            if data:
                self._chunk(data)

            def ready(buf: LogBuffer = buf, start: int = pos) -> bool:
                return len(buf.data) > start or buf.done or cluster.closed

            while True:
                with buf.cond:
                    buf.cond.wait_for(functools.partial(ready, buf, pos), timeout=1.0)
                    chunk = bytes(buf.data[pos:])
                    pos += len(chunk)
                    done = buf.done or cluster.closed
                if chunk:
                    self._chunk(chunk)
                if done and not chunk:
                    break
                with cluster.cond:
                    if (namespace, name) not in cluster.pods:
                        break
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    # -- admin --------------------------------------------------------------------------------

    def _admin(self, parts: list[str]) -> None:
        cluster = self.cluster
        if parts == ["faults"]:
            if self.command in ("PUT", "POST", "PATCH"):
                body = self._body() or {}
                try:
                    cluster.faults = cluster.faults.updated(body)
                except (ValueError, TypeError) as exc:
                    self._json(400, {"error": str(exc)})
                    return
            self._json(200, cluster.faults.to_json())
        elif parts == ["requests"] and self.command == "GET":
            with cluster.cond:
                self._json(200, dict(cluster.request_count))
        elif parts == ["compact"] and self.command == "POST":
            cluster.compact()
            self._json(200, {"compactedResourceVersion": cluster.compacted_rv})
        elif parts == ["drop-watches"] and self.command == "POST":
            with cluster.cond:
                cluster.watch_generation += 1
                cluster.cond.notify_all()
            self._json(200, {})
        elif len(parts) == 4 and parts[0] == "pods" and parts[3] in ("oom-kill", "evict"):
            ns, name, action = parts[1], parts[2], parts[3]
            with cluster.cond:
                pod = cluster.pods.get((ns, name))
                rt = cluster.runtimes.get(pod["metadata"]["uid"]) if pod else None
            if rt is None or self.command != "POST":
                self._json(404, {"error": f"no pod {ns}/{name}"})
                return
            if action == "oom-kill":
                rt.oom_requested = True
            else:
                rt.evict_requested = True
            rt.wake.set()
            self._json(200, {})
        else:
            self._json(404, {"error": "unknown admin endpoint"})
