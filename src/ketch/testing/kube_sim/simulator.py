"""``KubeSimulator``: the public face of the Kubernetes API simulator."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ketch.testing.kube_sim.cluster import Cluster
from ketch.testing.kube_sim.faults import Faults
from ketch.testing.kube_sim.server import Handler, _Server


class KubeSimulator:
    """A loopback Kubernetes API server whose fake kubelet runs containers as local processes.

    ``faults`` may be replaced (``sim.faults = Faults(...)``) or changed field by field
    (``sim.update_faults(api_error_rate=0.1)``) at any time, also over HTTP
    (``PATCH /_sim/faults`` with a JSON object).

    ``inherit_env``: container processes start from this process's environment (so a virtualenv,
    PATH and HOME keep working) plus the container's ``env``; with ``False`` they get only PATH.
    ``image_entrypoints`` maps an image to the command used when a container has ``args`` but no
    ``command`` (an image's ENTRYPOINT cannot be read; containers with neither exit 0 at once).
    ``bookmark_interval``: seconds between BOOKMARK events on watches that allow them.
    ``history_limit``: how many pod changes a watch can resume from before answering 410 Gone.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        *,
        inherit_env: bool = True,
        image_entrypoints: dict[str, list[str]] | None = None,
        bookmark_interval: float = 5.0,
        history_limit: int = 10_000,
    ) -> None:
        self.host = host
        self.port = port
        self._cluster = Cluster(
            faults or Faults(),
            inherit_env=inherit_env,
            image_entrypoints=image_entrypoints,
            history_limit=history_limit,
        )
        self._bookmark_interval = bookmark_interval
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> KubeSimulator:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), Handler)
        server.cluster = self._cluster
        server.bookmark_interval = self._bookmark_interval
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="kube-sim-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end all watches and kill every pod process."""
        server, self._server = self._server, None
        if server is None:
            return
        self._cluster.shutdown()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> KubeSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """Write a kubeconfig (JSON, which is valid YAML) pointing at this simulator."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-sim", "cluster": {"server": self.url}}],
            "users": [{"name": "kube-sim", "user": {"token": "kube-sim-token"}}],
            "contexts": [
                {
                    "name": "kube-sim",
                    "context": {"cluster": "kube-sim", "user": "kube-sim", "namespace": namespace},
                }
            ],
            "current-context": "kube-sim",
            "preferences": {},
        }
        path.write_text(json.dumps(config, indent=2))
        return path

    # -- faults ---------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._cluster.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self._cluster.faults = value

    def update_faults(self, **changes: Any) -> Faults:
        self._cluster.faults = self._cluster.faults.updated(changes)
        return self._cluster.faults

    def oom_kill(self, namespace: str, name: str) -> None:
        """OOM-kill a running pod now (terminated reason OOMKilled, exit code 137)."""
        self._runtime(namespace, name).oom_requested = True
        self._runtime(namespace, name).wake.set()

    def evict(self, namespace: str, name: str) -> None:
        """Evict a running pod now (phase Failed, reason Evicted)."""
        self._runtime(namespace, name).evict_requested = True
        self._runtime(namespace, name).wake.set()

    def drop_watches(self) -> None:
        """Close every open watch connection abruptly."""
        with self._cluster.cond:
            self._cluster.watch_generation += 1
            self._cluster.cond.notify_all()

    def compact(self) -> None:
        """Forget the watch history: a watch resumed from an older resourceVersion gets 410 Gone."""
        self._cluster.compact()

    # -- state ----------------------------------------------------------------------------------

    def pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._cluster.cond:
            return [
                copy.deepcopy(p)
                for (ns, _), p in sorted(self._cluster.pods.items())
                if namespace is None or ns == namespace
            ]

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._cluster.cond:
            pod = self._cluster.pods.get((namespace, name))
            return copy.deepcopy(pod) if pod is not None else None

    def events(self, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._cluster.cond:
            return [
                copy.deepcopy(e)
                for (ns, _), e in self._cluster.events.items()
                if namespace is None or ns == namespace
            ]

    def pod_log(
        self, namespace: str, name: str, container: str | None = None, *, previous: bool = False
    ) -> str:
        """The output captured so far from a pod's container (first container by default);
        ``previous``: the output of its run before its last restart ("" if none)."""
        pod = self.pod(namespace, name)
        if pod is None:
            raise KeyError(f"{namespace}/{name}")
        container = container or pod["spec"]["containers"][0]["name"]
        rt = self._cluster.runtimes.get(pod["metadata"]["uid"])
        logs = (rt.previous_logs if previous else rt.logs) if rt else {}
        buf = logs.get(container)
        return bytes(buf.data).decode(errors="replace") if buf else ""

    @property
    def request_count(self) -> dict[str, int]:
        """API requests served so far, by Kubernetes verb (create/get/list/watch/delete)."""
        with self._cluster.cond:
            return dict(self._cluster.request_count)

    @property
    def request_log(self) -> list[tuple[str, str]]:
        """(verb, resource) of every API request, in order."""
        with self._cluster.cond:
            return list(self._cluster.request_log)

    @property
    def resource_version(self) -> int:
        return self._cluster.rv

    def set_secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        """Make a Secret's keys available to ``secretKeyRef``/``secretRef`` in containers."""
        with self._cluster.cond:
            self._cluster.secrets[(namespace, name)] = dict(data)

    def set_config_map(self, namespace: str, name: str, data: dict[str, str]) -> None:
        with self._cluster.cond:
            self._cluster.config_maps[(namespace, name)] = dict(data)

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
    ) -> Any:
        """Poll ``predicate`` until it returns something truthy; ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout:.1f}s")
            time.sleep(interval)

    def wait_for_phase(
        self, namespace: str, name: str, phases: str | tuple[str, ...], timeout: float = 10.0
    ) -> dict[str, Any]:
        wanted = (phases,) if isinstance(phases, str) else phases

        def check() -> dict[str, Any] | None:
            pod = self.pod(namespace, name)
            return pod if pod is not None and pod["status"].get("phase") in wanted else None

        return self.wait_for(check, timeout)

    def _runtime(self, namespace: str, name: str) -> Any:
        pod = self.pod(namespace, name)
        if pod is None:
            raise KeyError(f"{namespace}/{name}")
        return self._cluster.runtimes[pod["metadata"]["uid"]]
