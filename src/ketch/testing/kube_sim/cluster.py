"""In-memory cluster state and the fake kubelet that runs pod containers as local processes."""

from __future__ import annotations

import bisect
import contextlib
import copy
import functools
import io
import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from ketch.testing.kube_sim.faults import Faults
from ketch.testing.kube_sim.selectors import labels_match

NODE_NAME = "kube-sim-node"
# back-off before a container is restarted (restartPolicy OnFailure/Always), doubling: a
# real kubelet waits 10 s doubling to 5 min; the simulator is quicker
RESTART_BACKOFF_FIRST = 0.1
RESTART_BACKOFF_MAX = 2.0
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
CLUSTER_DOMAIN = "cluster.local"
POD_HOSTNAME_ENV = "KUBE_SIM_POD_HOSTNAME"
# Every process of a container carries "<pod uid>/<container name>" in its environment: the
# simulator's stand-in for the container's cgroup (see kill_container).
CONTAINER_ENV = "KUBE_SIM_CONTAINER"
# Put first on the PYTHONPATH of every container process: a Python process then gets its
# pod's hostname from socket.gethostname(), as in a real pod (its own UTS namespace), and the
# sitecustomize it shadows (if any) still runs.
_SITECUSTOMIZE = f"""\
\"\"\"Written by the Kubernetes API simulator's fake kubelet: socket.gethostname() returns
the pod's hostname (${POD_HOSTNAME_ENV}), as in a real pod.\"\"\"
import os as _os
import sys as _sys

_hostname = _os.environ.get({POD_HOSTNAME_ENV!r})
if _hostname:
    import _socket  # cheap; socket's "from _socket import *" then takes the patched function

    def _gethostname(_name=_hostname):
        return _name

    _socket.gethostname = _gethostname
    if "socket" in _sys.modules:
        _sys.modules["socket"].gethostname = _gethostname


def _chain():
    import importlib.machinery

    here = _os.path.dirname(_os.path.abspath(__file__))
    path = [p for p in _sys.path if _os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        import importlib.util

        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_chain()
"""


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """Turns into a Kubernetes ``Status`` answer."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


class ConfigError(Exception):
    """A container's env cannot be resolved (missing Secret/ConfigMap key)."""


class LogBuffer:
    """One container's output, readable while it grows."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done = False
        self.cond = threading.Condition()

    def append(self, chunk: bytes) -> None:
        with self.cond:
            self.data.extend(chunk)
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()


@dataclass
class PodRuntime:
    uid: str
    namespace: str
    name: str
    wake: threading.Event = field(default_factory=threading.Event)
    stop: bool = False
    running: bool = False
    finished: bool = False
    delete_deadline: float | None = None
    oom_requested: bool = False
    evict_requested: bool = False
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, LogBuffer] = field(default_factory=dict)
    # the log of each restarted container's previous run (``GET .../log?previous=true``)
    previous_logs: dict[str, LogBuffer] = field(default_factory=dict)
    thread: threading.Thread | None = None


def _validate_labels(where: str, labels: Any) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise ApiError(422, "Invalid", f"{where}: Invalid value: must be an object")
    for key, value in labels.items():
        name = key.rsplit("/", 1)[-1]
        if not _LABEL_NAME.match(name) or len(name) > 63:
            raise ApiError(
                422,
                "Invalid",
                f"{where}: Invalid value: {key!r}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            )
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise ApiError(
                422,
                "Invalid",
                f"{where}: Invalid value: {value!r}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (must be no more than 63 characters)",
            )


def validate_pod(pod: dict[str, Any]) -> None:
    meta = pod.get("metadata") or {}
    name = meta.get("name") or ""
    if not name:
        raise ApiError(
            422,
            "Invalid",
            "Pod is invalid: metadata.name: Required value: name or generateName is required",
        )
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise ApiError(
            422,
            "Invalid",
            f"Pod \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            {"name": name, "kind": "Pod"},
        )
    _validate_labels(f'Pod "{name}" is invalid: metadata.labels', meta.get("labels"))
    annotations = meta.get("annotations")
    if annotations is not None and not all(isinstance(v, str) for v in annotations.values()):
        raise ApiError(
            422, "Invalid", f'Pod "{name}" is invalid: metadata.annotations: values must be strings'
        )
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: spec.containers: Required value')
    seen: set[str] = set()
    for kind, items in (
        ("initContainers", spec.get("initContainers") or []),
        ("containers", containers),
    ):
        for i, c in enumerate(items):
            cname = c.get("name") or ""
            where = f'Pod "{name}" is invalid: spec.{kind}[{i}]'
            if not cname or len(cname) > 63 or not _DNS_LABEL.match(cname):
                raise ApiError(
                    422,
                    "Invalid",
                    f"{where}.name: Invalid value: {cname!r}: a lowercase RFC 1123 label is required",
                )
            if cname in seen:
                raise ApiError(422, "Invalid", f"{where}.name: Duplicate value: {cname!r}")
            seen.add(cname)
            if not c.get("image"):
                raise ApiError(422, "Invalid", f"{where}.image: Required value")
    _validate_labels(f'Pod "{name}" is invalid: spec.nodeSelector', spec.get("nodeSelector"))


class Cluster:
    """Pods, Events, a global resourceVersion counter and the watch history."""

    def __init__(
        self,
        faults: Faults,
        *,
        inherit_env: bool = True,
        image_entrypoints: dict[str, list[str]] | None = None,
        history_limit: int = 10_000,
        work_dir: Path | None = None,
    ) -> None:
        self.cond = threading.Condition()
        self._faults = faults
        self.rng = random.Random(faults.seed)
        self.rv = 1  # "0" means "any version" to a watch; a real cluster never lists it
        self.compacted_rv = 0
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.history_rvs: list[int] = []
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.history_limit = history_limit
        self.runtimes: dict[str, PodRuntime] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.config_maps: dict[tuple[str, str], dict[str, str]] = {}
        self.request_count: Counter[str] = Counter()
        self.request_log: list[tuple[str, str]] = []
        self.inherit_env = inherit_env
        self.image_entrypoints = dict(image_entrypoints or {})
        self._tmp = tempfile.TemporaryDirectory(prefix="kube-sim-") if work_dir is None else None
        self.work_dir = Path(self._tmp.name) if self._tmp else Path(work_dir or ".")
        # not a namespace name (those are DNS labels): no pod's scratch directory lands here
        self.site_dir = self.work_dir / "_pod_site"
        self.site_dir.mkdir(parents=True, exist_ok=True)
        (self.site_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        self.closed = False
        self.watch_generation = 0

    # -- faults -------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        with self.cond:
            if value.seed is not None and value.seed != self._faults.seed:
                self.rng = random.Random(value.seed)
            self._faults = value
            self.cond.notify_all()  # watches re-read watch_drop_after_seconds
            runtimes = list(self.runtimes.values())
        for rt in runtimes:
            rt.wake.set()

    def chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self.cond:
            return self.rng.random() < rate

    def pick(self, options: tuple[int, ...]) -> int:
        with self.cond:
            return self.rng.choice(options)

    # -- storage --------------------------------------------------------------------------------

    def _commit(self, event_type: str, pod: dict[str, Any]) -> None:
        """Store a pod change; caller holds ``cond``."""
        self.rv += 1
        meta = pod["metadata"]
        meta["resourceVersion"] = str(self.rv)
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.pods.pop(key, None)
        else:
            self.pods[key] = pod
        self.history_rvs.append(self.rv)
        self.history.append((self.rv, meta["namespace"], event_type, copy.deepcopy(pod)))
        if len(self.history) > self.history_limit:
            cut = len(self.history) // 2
            self.compacted_rv = self.history_rvs[cut - 1]
            del self.history[:cut]
            del self.history_rvs[:cut]
        self.cond.notify_all()

    def compact(self) -> None:
        with self.cond:
            self.compacted_rv = self.rv
            self.history.clear()
            self.history_rvs.clear()
            self.cond.notify_all()

    def events_after(self, rv: int) -> list[tuple[int, str, str, dict[str, Any]]]:
        """History entries newer than ``rv``; caller holds ``cond``."""
        i = bisect.bisect_right(self.history_rvs, rv)
        return self.history[i:]

    def update_pod(self, rt: PodRuntime, fn: Callable[[dict[str, Any]], None]) -> bool:
        with self.cond:
            pod = self.pods.get((rt.namespace, rt.name))
            if pod is None or pod["metadata"]["uid"] != rt.uid:
                return False
            pod = copy.deepcopy(pod)
            fn(pod)
            self._commit("MODIFIED", pod)
            return True

    def record_event(
        self, pod: dict[str, Any], type_: str, reason: str, message: str, component: str = "kubelet"
    ) -> None:
        meta = pod["metadata"]
        with self.cond:
            self.rv += 1
            ts = now_rfc3339()
            name = f"{meta['name']}.{uuid.uuid4().hex[:16]}"
            self.events[(meta["namespace"], name)] = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": name,
                    "namespace": meta["namespace"],
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": str(self.rv),
                    "creationTimestamp": ts,
                },
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                },
                "reason": reason,
                "message": message,
                "type": type_,
                "source": {"component": component, "host": NODE_NAME},
                "reportingComponent": component,
                "reportingInstance": NODE_NAME,
                "firstTimestamp": ts,
                "lastTimestamp": ts,
                "count": 1,
            }

    # -- API operations -------------------------------------------------------------------------

    def create_pod(
        self, namespace: str, body: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("kind", "Pod") != "Pod":
            raise ApiError(400, "BadRequest", "the body of the request must be a Pod")
        pod = copy.deepcopy(body)
        pod.setdefault("apiVersion", "v1")
        pod["kind"] = "Pod"
        meta = pod.setdefault("metadata", {})
        if meta.get("namespace") not in (None, "", namespace):
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
            meta["name"] = f"{meta['generateName']}{suffix}"
        validate_pod(pod)
        meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta.setdefault("generation", 1)
        spec = pod.setdefault("spec", {})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
        pod["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        with self.cond:
            key = (namespace, meta["name"])
            if key in self.pods:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'pods "{meta["name"]}" already exists',
                    {"name": meta["name"], "kind": "pods"},
                )
            if dry_run:
                meta["resourceVersion"] = ""
                return pod
            self._commit("ADDED", pod)
            rt = PodRuntime(uid=meta["uid"], namespace=namespace, name=meta["name"])
            self.runtimes[rt.uid] = rt
            created = copy.deepcopy(pod)
        rt.thread = threading.Thread(
            target=Kubelet(self, rt, created).run, name=f"kube-sim-pod-{rt.name}", daemon=True
        )
        rt.thread.start()
        return created

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        with self.cond:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise ApiError(
                    404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"}
                )
            return copy.deepcopy(pod)

    def delete_pod(self, namespace: str, name: str, grace: int | None) -> dict[str, Any]:
        with self.cond:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise ApiError(
                    404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"}
                )
            rt = self.runtimes.get(pod["metadata"]["uid"])
            if grace is None:
                grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
            if rt is not None and rt.running and grace > 0:
                if pod["metadata"].get("deletionTimestamp"):
                    return copy.deepcopy(pod)
                pod = copy.deepcopy(pod)
                pod["metadata"]["deletionTimestamp"] = now_rfc3339()
                pod["metadata"]["deletionGracePeriodSeconds"] = grace
                self._commit("MODIFIED", pod)
                rt.delete_deadline = time.monotonic() + grace
                rt.wake.set()
                return copy.deepcopy(pod)
            pod = copy.deepcopy(pod)
            pod["metadata"]["deletionTimestamp"] = now_rfc3339()
            pod["metadata"]["deletionGracePeriodSeconds"] = 0
            self._commit("DELETED", pod)
            if rt is not None:
                rt.stop = True
                rt.wake.set()
            procs = list(rt.procs.values()) if rt else []
        for proc in procs:
            kill_container(proc)
        return copy.deepcopy(pod)

    def remove_after_grace(self, rt: PodRuntime) -> None:
        with self.cond:
            pod = self.pods.get((rt.namespace, rt.name))
            if pod is not None and pod["metadata"]["uid"] == rt.uid:
                self._commit("DELETED", copy.deepcopy(pod))
            rt.stop = True

    def shutdown(self) -> None:
        with self.cond:
            self.closed = True
            runtimes = list(self.runtimes.values())
            self.cond.notify_all()
        for rt in runtimes:
            rt.stop = True
            rt.wake.set()
            for proc in list(rt.procs.values()):
                kill_container(proc)
        for rt in runtimes:
            if rt.thread is not None:
                rt.thread.join(timeout=2)
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()


class ContainerProcess(subprocess.Popen[bytes]):
    """A container's main process; ``container`` is the ``$KUBE_SIM_CONTAINER`` value that
    every process of the container inherits."""

    container: str = ""


def container_processes(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """Every process of ``proc``'s container but ``proc`` itself, in any session or
    process group: its descendants (while it lives, so that none is taken for an orphan
    yet) and any process that carries the container's ``$KUBE_SIM_CONTAINER`` (an orphan
    whose parent already died, a daemon that double-forked)."""
    found: dict[int, psutil.Process] = {}
    if proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            found.update((p.pid, p) for p in psutil.Process(proc.pid).children(recursive=True))
    marker = getattr(proc, "container", "")
    if marker:
        for p in psutil.process_iter():
            if p.pid in found or p.pid in (proc.pid, os.getpid()):
                continue
            with contextlib.suppress(psutil.Error):
                if p.environ().get(CONTAINER_ENV) == marker:
                    found[p.pid] = p
    return list(found.values())


def kill_container(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process of ``proc``'s container, as the container runtime does
    through its cgroup (an OOM kill, an eviction, the end of a deletion's grace period):
    a process that left the container's process group (the try's log pump, in a session
    of its own) dies with it. Its processes are found before any is killed."""
    others = container_processes(proc)
    kill_group(proc, signal.SIGKILL)
    for other in others:
        with contextlib.suppress(psutil.Error):
            other.kill()


def kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _set_condition(
    pod: dict[str, Any],
    type_: str,
    status: str,
    reason: str | None = None,
    message: str | None = None,
) -> None:
    conds = pod["status"].setdefault("conditions", [])
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": now_rfc3339(),
    }
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    for i, existing in enumerate(conds):
        if existing["type"] == type_:
            if existing["status"] == status and existing.get("reason") == reason:
                return
            conds[i] = cond
            return
    conds.append(cond)


def _container_status(
    c: dict[str, Any], state: dict[str, Any], ready: bool = False, started: bool = False
) -> dict[str, Any]:
    return {
        "name": c["name"],
        "image": c.get("image", ""),
        "imageID": f"sim://{c.get('image', '')}",
        "containerID": f"sim://{c['name']}",
        "ready": ready,
        "started": started,
        "restartCount": 0,
        "state": state,
        "lastState": {},
    }


class Kubelet:
    """Drives one pod: schedule, pull images, run init containers, run containers, report."""

    POLL = 0.05

    def __init__(self, cluster: Cluster, rt: PodRuntime, pod: dict[str, Any]) -> None:
        self.cluster = cluster
        self.rt = rt
        self.pod = copy.deepcopy(pod)
        self.spec = self.pod["spec"]
        self.init_statuses: dict[str, dict[str, Any]] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        # main containers restarted under the pod's restartPolicy: (restartCount, lastState)
        self.restarts: dict[str, tuple[int, dict[str, Any]]] = {}
        self.oom_killed: set[str] = set()  # containers whose current run was OOM-killed

    # helpers

    def _wait(self, seconds: float) -> None:
        self.rt.wake.wait(seconds)
        self.rt.wake.clear()

    def _selected(self, selector: str | None) -> bool:
        return selector is not None and labels_match(selector, self.pod)

    def _update(self, fn: Callable[[dict[str, Any]], None]) -> bool:
        def apply(pod: dict[str, Any]) -> None:
            fn(pod)
            if self.init_statuses:
                pod["status"]["initContainerStatuses"] = list(self.init_statuses.values())
            if self.statuses:
                statuses = []
                for s in self.statuses.values():
                    restarted = self.restarts.get(s["name"])
                    if restarted is not None:
                        s = {**s, "restartCount": restarted[0], "lastState": restarted[1]}
                    statuses.append(s)
                pod["status"]["containerStatuses"] = statuses

        return self.cluster.update_pod(self.rt, apply)

    def _event(self, type_: str, reason: str, message: str, component: str = "kubelet") -> None:
        self.cluster.record_event(self.pod, type_, reason, message, component)

    # stages

    def run(self) -> None:
        try:
            if not self._schedule():
                return
            if not self._run_init_containers():
                return
            self._run_containers()
        finally:
            self.rt.finished = True
            for buf in self.rt.logs.values():
                buf.close()

    def _schedule(self) -> bool:
        reported = False
        while not self.rt.stop:
            faults = self.cluster.faults
            if self._selected(faults.unschedulable_selector):
                if not reported:
                    msg = "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
                    self._update(
                        functools.partial(
                            _set_condition,
                            type_="PodScheduled",
                            status="False",
                            reason="Unschedulable",
                            message=msg,
                        )
                    )
                    self._event("Warning", "FailedScheduling", msg, "default-scheduler")
                    reported = True
                self._wait(0.1)
                continue

            def scheduled(p: dict[str, Any]) -> None:
                p["spec"]["nodeName"] = NODE_NAME
                _set_condition(p, "PodScheduled", "True")

            self._update(scheduled)
            self._event(
                "Normal",
                "Scheduled",
                f"Successfully assigned {self.rt.namespace}/{self.rt.name} to {NODE_NAME}",
                "default-scheduler",
            )
            return True
        return False

    def _pull(self, c: dict[str, Any], statuses: dict[str, dict[str, Any]]) -> bool:
        image = c["image"]
        attempts = 0
        while not self.rt.stop:
            if image not in self.cluster.faults.image_pull_failures:
                if attempts:
                    self._event("Normal", "Pulling", f'Pulling image "{image}"')
                self._event(
                    "Normal", "Pulled", f'Container image "{image}" already present on machine'
                )
                return True
            attempts += 1
            if attempts == 1:
                msg = f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack image "{image}": not found'
                statuses[c["name"]] = _container_status(
                    c, {"waiting": {"reason": "ErrImagePull", "message": msg}}
                )
                self._update(lambda p: None)
                self._event("Normal", "Pulling", f'Pulling image "{image}"')
                self._event("Warning", "Failed", msg)
                self._event("Warning", "Failed", "Error: ErrImagePull")
            elif attempts == 3:
                msg = f'Back-off pulling image "{image}"'
                statuses[c["name"]] = _container_status(
                    c, {"waiting": {"reason": "ImagePullBackOff", "message": msg}}
                )
                self._update(lambda p: None)
                self._event("Normal", "BackOff", msg)
                self._event("Warning", "Failed", "Error: ImagePullBackOff")
            self._wait(0.1)
        return False

    def hostname(self) -> str:
        """The pod's hostname as a kubelet sets it: ``spec.hostname`` or the pod name (at
        most 63 characters), the FQDN with ``setHostnameAsFQDN`` and a ``subdomain``, the
        node's name with ``hostNetwork``."""
        spec = self.spec
        if spec.get("hostNetwork"):
            return NODE_NAME
        name = str(spec.get("hostname") or self.rt.name)
        if len(name) > 63:
            name = name[:63].rstrip("-.")
        if spec.get("setHostnameAsFQDN") and spec.get("subdomain"):
            return f"{name}.{spec['subdomain']}.{self.rt.namespace}.svc.{CLUSTER_DOMAIN}"
        return name

    def _env(self, c: dict[str, Any]) -> dict[str, str]:
        ns = self.rt.namespace
        env = (
            dict(os.environ)
            if self.cluster.inherit_env
            else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        )
        hostname = self.hostname()
        env["HOSTNAME"] = hostname
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for kind, store in (
                ("configMapRef", self.cluster.config_maps),
                ("secretRef", self.cluster.secrets),
            ):
                ref = src.get(kind)
                if ref is None:
                    continue
                data = store.get((ns, ref.get("name", "")))
                if data is None:
                    if ref.get("optional"):
                        continue
                    label = "configmap" if kind == "configMapRef" else "secret"
                    raise ConfigError(f'{label} "{ref.get("name")}" not found')
                env.update({prefix + k: v for k, v in data.items()})
        for item in c.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = str(item.get("value") or "")
                continue
            vf = item.get("valueFrom") or {}
            for kind, store, label in (
                ("secretKeyRef", self.cluster.secrets, "secret"),
                ("configMapKeyRef", self.cluster.config_maps, "configmap"),
            ):
                ref = vf.get(kind)
                if ref is None:
                    continue
                data = store.get((ns, ref.get("name", "")))
                if data is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        break
                    if data is None:
                        raise ConfigError(f'{label} "{ref.get("name")}" not found')
                    raise ConfigError(
                        f"couldn't find key {ref.get('key')} in {label.capitalize()} {ns}/{ref.get('name')}"
                    )
                env[name] = data[ref["key"]]
            field_ref = vf.get("fieldRef")
            if field_ref:
                path = field_ref.get("fieldPath", "")
                values = {
                    "metadata.name": self.rt.name,
                    "metadata.namespace": ns,
                    "metadata.uid": self.rt.uid,
                    "spec.nodeName": NODE_NAME,
                    "spec.serviceAccountName": self.spec.get("serviceAccountName", ""),
                    "status.podIP": "127.0.0.1",
                    "status.hostIP": "127.0.0.1",
                }
                m = re.match(r"metadata\.(labels|annotations)\['(.+)'\]$", path)
                if m:
                    env[name] = (self.pod["metadata"].get(m.group(1)) or {}).get(m.group(2), "")
                elif path in values:
                    env[name] = values[path]
        # socket.gethostname() in a Python process: the pod's hostname (see _SITECUSTOMIZE)
        env[POD_HOSTNAME_ENV] = hostname
        env[CONTAINER_ENV] = f"{self.rt.uid}/{c['name']}"
        site = str(self.cluster.site_dir)
        env["PYTHONPATH"] = site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _command(self, c: dict[str, Any]) -> list[str]:
        command = list(c.get("command") or self.cluster.image_entrypoints.get(c["image"], []))
        return [str(x) for x in command + list(c.get("args") or [])] if command else []

    def _workdir(self, c: dict[str, Any]) -> str:
        wd = c.get("workingDir")
        if wd and os.path.isdir(wd):
            return str(wd)
        path = self.cluster.work_dir / self.rt.namespace / self.rt.name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def _start(
        self, c: dict[str, Any], statuses: dict[str, dict[str, Any]]
    ) -> subprocess.Popen[bytes] | str | None:
        """Start a container: a process, ``None`` (nothing to run: exits 0), or an error text."""
        buf = LogBuffer()
        while not self.rt.stop:
            try:
                env = self._env(c)
                break
            except ConfigError as exc:
                if (
                    statuses.get(c["name"], {}).get("state", {}).get("waiting", {}).get("reason")
                    != "CreateContainerConfigError"
                ):
                    statuses[c["name"]] = _container_status(
                        c,
                        {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}},
                    )
                    self._update(lambda p: None)
                    self._event("Warning", "Failed", f"Error: {exc}")
                self._wait(0.2)
        else:
            return "stopped"
        self.rt.logs[c["name"]] = buf
        command = self._command(c)
        self._event("Normal", "Created", f"Created container {c['name']}")
        if not command:
            return None
        try:
            proc = ContainerProcess(
                command,
                cwd=self._workdir(c),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            buf.close()
            return f"failed to create containerd task: exec: {command[0]!r}: {exc.strerror or exc}"
        proc.container = env[CONTAINER_ENV]
        self.rt.procs[c["name"]] = proc
        threading.Thread(
            target=self._pump, args=(proc, buf), name=f"kube-sim-log-{self.rt.name}", daemon=True
        ).start()
        self._event("Normal", "Started", f"Started container {c['name']}")
        return proc

    @staticmethod
    def _pump(proc: subprocess.Popen[bytes], buf: LogBuffer) -> None:
        assert proc.stdout is not None
        stream = proc.stdout
        assert isinstance(stream, io.BufferedReader)
        while True:
            chunk = stream.read1(65536)
            if not chunk:
                break
            buf.append(chunk)
        buf.close()

    @staticmethod
    def _terminated(
        exit_code: int, reason: str, started: str, message: str | None = None
    ) -> dict[str, Any]:
        term: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": now_rfc3339(),
            "containerID": "sim://",
        }
        if message:
            term["message"] = message
        return {"terminated": term}

    def _run_init_containers(self) -> bool:
        inits = self.spec.get("initContainers") or []
        if not inits:
            self._update(lambda p: _set_condition(p, "Initialized", "True"))
            return True
        for c in inits:
            self.init_statuses[c["name"]] = _container_status(
                c, {"waiting": {"reason": "PodInitializing"}}
            )
        for c in self.spec["containers"]:
            self.statuses[c["name"]] = _container_status(
                c, {"waiting": {"reason": "PodInitializing"}}
            )
        self._update(
            lambda p: _set_condition(
                p,
                "Initialized",
                "False",
                "ContainersNotInitialized",
                "containers with incomplete status: [" + " ".join(c["name"] for c in inits) + "]",
            )
        )
        for c in inits:
            if not self._pull(c, self.init_statuses):
                return False
            started = now_rfc3339()
            result = self._start(c, self.init_statuses)
            if result == "stopped":
                return False
            if isinstance(result, str):
                code, reason, msg = 128, "StartError", result
            elif result is None:
                code, reason, msg = 0, "Completed", None
            else:
                self.init_statuses[c["name"]] = _container_status(
                    c, {"running": {"startedAt": started}}, started=True
                )
                self._update(lambda p: None)
                code = self._wait_exit({c["name"]: result}, main=False)[c["name"]]
                reason, msg = ("Completed" if code == 0 else "Error"), None
                self.rt.procs.pop(c["name"], None)
            if self.rt.stop:
                return False
            self.init_statuses[c["name"]] = _container_status(
                c, self._terminated(code, reason, started, msg)
            )
            if code != 0:

                def failed(p: dict[str, Any], name: str = c["name"]) -> None:
                    p["status"]["phase"] = "Failed"
                    _set_condition(
                        p,
                        "Initialized",
                        "False",
                        "ContainersNotInitialized",
                        f"containers with incomplete status: [{name}]",
                    )
                    _set_condition(p, "Ready", "False", "PodFailed")

                self._update(failed)
                return False
            self._update(lambda p: None)
        self._update(lambda p: _set_condition(p, "Initialized", "True"))
        return True

    def _wait_exit(
        self,
        procs: dict[str, subprocess.Popen[bytes]],
        *,
        main: bool = True,
        restart: Callable[[str, int], subprocess.Popen[bytes] | None] | None = None,
    ) -> dict[str, int]:
        """Wait for processes, applying deletion/OOM/eviction; returns exit codes.

        ``restart(name, exit_code)`` may start a container again (the pod's restartPolicy):
        its new process replaces the old one and the wait goes on."""
        codes: dict[str, int] = {}
        procs = dict(procs)
        started = dict.fromkeys(procs, time.monotonic())
        term_sent = False
        while True:
            for name, proc in list(procs.items()):
                if name not in codes and proc.poll() is not None:
                    rc = proc.returncode
                    code = rc if rc >= 0 else 128 - rc
                    rt = self.rt
                    again = None
                    if restart is not None and not (
                        rt.stop or rt.delete_deadline is not None or rt.evict_requested
                    ):
                        again = restart(name, code)
                    if again is not None:
                        procs[name] = again
                        started[name] = time.monotonic()
                    else:
                        codes[name] = code
            if len(codes) == len(procs):
                return codes
            rt = self.rt
            faults = self.cluster.faults
            now = time.monotonic()
            if rt.stop:
                for proc in procs.values():
                    kill_container(proc)
            elif rt.delete_deadline is not None:
                if not term_sent:
                    self._event("Normal", "Killing", "Stopping container")
                    for proc in procs.values():
                        kill_group(proc, signal.SIGTERM)
                    term_sent = True
                elif now >= rt.delete_deadline:
                    for proc in procs.values():
                        kill_container(proc)
            elif main:  # OOM and eviction faults target the main containers
                fault = self._selected(faults.oom_kill_selector)
                victims = [
                    name
                    for name in procs
                    if name not in codes
                    and name not in self.oom_killed
                    and (
                        rt.oom_requested
                        or (fault and now - started[name] >= faults.oom_after_seconds)
                    )
                ]
                rt.oom_requested = False
                if victims:
                    self.oom_killed.update(victims)
                    self._event(
                        "Warning",
                        "OOMKilling",
                        "Memory cgroup out of memory: Killed process (container exceeded its"
                        " memory limit)",
                    )
                    for name in victims:
                        kill_container(procs[name])
                elif not self.oom_killed and (
                    rt.evict_requested
                    or (
                        self._selected(faults.evict_selector)
                        and now - min(started.values()) >= faults.evict_after_seconds
                    )
                ):
                    rt.evict_requested = True
                    for proc in procs.values():
                        kill_container(proc)
            self._wait(self.POLL)

    def _restart_policy(self, name: str, code: int) -> bool:
        policy = self.spec.get("restartPolicy") or "Always"
        return policy == "Always" or (
            policy == "OnFailure" and (code != 0 or name in self.oom_killed)
        )

    def _restart(
        self, c: dict[str, Any], code: int, started: dict[str, str]
    ) -> subprocess.Popen[bytes] | None:
        """Run a main container again after it exited (restartPolicy OnFailure/Always): its
        last run becomes ``lastState`` and its log the ``previous`` log; None if it is not
        restarted (then its exit ends it)."""
        name = c["name"]
        if not self._restart_policy(name, code):
            return None
        oom = name in self.oom_killed
        self.oom_killed.discard(name)
        if oom:
            code, reason = 137, "OOMKilled"
        else:
            reason = "Completed" if code == 0 else "Error"
        count = self.restarts.get(name, (0, {}))[0] + 1
        self.restarts[name] = (count, self._terminated(code, reason, started[name]))
        old = self.rt.logs.get(name)
        if old is not None:
            with old.cond:  # the pipe is at its end when the process is gone (or nearly)
                old.cond.wait_for(functools.partial(getattr, old, "done"), timeout=1.0)
            old.close()
            self.rt.previous_logs[name] = old
        delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_FIRST * 2 ** (count - 1))
        self.statuses[name] = _container_status(
            c,
            {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container={name}"
                    f" pod={self.rt.name}_{self.rt.namespace}({self.rt.uid})",
                }
            },
        )
        self._update(lambda p: None)
        self._event("Warning", "BackOff", "Back-off restarting failed container")
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self.rt.stop or self.rt.delete_deadline is not None or self.rt.evict_requested:
                return None
            self._wait(min(self.POLL, max(0.0, deadline - time.monotonic())))
        result = self._start(c, self.statuses)
        if not isinstance(result, subprocess.Popen):
            return None
        started[name] = now_rfc3339()
        self.statuses[name] = _container_status(
            c, {"running": {"startedAt": started[name]}}, ready=True, started=True
        )
        self._update(lambda p: None)
        return result

    def _run_containers(self) -> None:
        containers = self.spec["containers"]
        for c in containers:
            self.statuses[c["name"]] = _container_status(
                c, {"waiting": {"reason": "ContainerCreating"}}
            )
        self._update(lambda p: _set_condition(p, "Ready", "False", "ContainersNotReady"))
        for c in containers:
            if not self._pull(c, self.statuses):
                return
        procs: dict[str, subprocess.Popen[bytes]] = {}
        codes: dict[str, int] = {}
        messages: dict[str, str] = {}
        started = now_rfc3339()
        for c in containers:
            result = self._start(c, self.statuses)
            if result == "stopped":
                for proc in procs.values():
                    kill_container(proc)
                return
            if isinstance(result, str):
                codes[c["name"]] = 128
                messages[c["name"]] = result
            elif result is None:
                codes[c["name"]] = 0
            else:
                procs[c["name"]] = result
        with self.cluster.cond:
            self.rt.running = True
        for c in containers:
            if c["name"] in procs:
                self.statuses[c["name"]] = _container_status(
                    c, {"running": {"startedAt": started}}, ready=True, started=True
                )
            elif c["name"] in messages:
                self.statuses[c["name"]] = _container_status(
                    c, self._terminated(128, "StartError", started, messages[c["name"]])
                )
            else:
                self.statuses[c["name"]] = _container_status(
                    c, self._terminated(0, "Completed", started)
                )

        def running(p: dict[str, Any]) -> None:
            p["status"]["phase"] = "Running"
            p["status"]["startTime"] = started
            p["status"]["hostIP"] = "127.0.0.1"
            p["status"]["podIP"] = "127.0.0.1"
            p["status"]["podIPs"] = [{"ip": "127.0.0.1"}]
            _set_condition(p, "ContainersReady", "True")
            _set_condition(p, "Ready", "True")

        self._update(running)
        started_at = dict.fromkeys(procs, started)
        by_name = {c["name"]: c for c in containers}
        codes.update(
            self._wait_exit(
                procs,
                restart=lambda name, code: self._restart(by_name[name], code, started_at),
            )
        )
        for name in procs:
            buf = self.rt.logs.get(name)
            if buf is not None:
                with buf.cond:
                    buf.cond.wait_for(functools.partial(getattr, buf, "done"), timeout=1.0)
                buf.close()
        rt = self.rt
        if rt.stop:
            return
        oom = bool(self.oom_killed)
        evicted = rt.evict_requested and not oom
        for c in containers:
            name = c["name"]
            if name in messages:
                continue
            code = codes[name]
            if name in self.oom_killed and name in procs:
                code, reason = 137, "OOMKilled"
            else:
                reason = "Completed" if code == 0 else "Error"
            self.statuses[name] = _container_status(
                c, self._terminated(code, reason, started_at.get(name, started))
            )
        if evicted:
            self._event(
                "Warning",
                "Evicted",
                "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi.",
            )
        failed = evicted or any(code != 0 for code in codes.values()) or oom

        def finished(p: dict[str, Any]) -> None:
            st = p["status"]
            st["phase"] = "Failed" if failed else "Succeeded"
            if evicted:
                st["reason"] = "Evicted"
                st["message"] = (
                    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi."
                )
            _set_condition(
                p, "ContainersReady", "False", "PodCompleted" if not failed else "PodFailed"
            )
            _set_condition(p, "Ready", "False", "PodCompleted" if not failed else "PodFailed")

        self._update(finished)
        with self.cluster.cond:
            rt.running = False
        if rt.delete_deadline is not None:
            self.cluster.remove_after_grace(rt)
