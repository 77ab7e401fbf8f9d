"""The simulated cluster's state: pods, Events, the resourceVersion counter, watch history.

The API server's side of the simulator (``server`` turns HTTP into these calls): every
change of a pod is committed here under one condition variable, with a new
resourceVersion and an entry in the watch history (compacted, so a watch can get 410
Gone). Each created pod gets a :class:`~ketch.testing.kube_sim.kubelet.Kubelet` thread.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ketch.testing.kube_sim.container_env import SITECUSTOMIZE
from ketch.testing.kube_sim.errors import ApiError
from ketch.testing.kube_sim.faults import Faults
from ketch.testing.kube_sim.kubelet import Kubelet
from ketch.testing.kube_sim.processes import kill_container
from ketch.testing.kube_sim.runtime import NODE_NAME, PodRuntime, now_rfc3339
from ketch.testing.kube_sim.validation import validate_pod


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
        (self.site_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
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
