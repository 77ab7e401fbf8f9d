"""How a kubelet sets a container up: its environment, hostname, command and directory.

Kept apart from the kubelet's life cycle of a pod because it is the part a DAG author's
pod template exercises most (env, envFrom, Secret and ConfigMap references, fieldRef) and
the part that makes a local process look like it runs in its pod (hostname, marker).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from ketch.testing.kube_sim.processes import CONTAINER_ENV
from ketch.testing.kube_sim.runtime import NODE_NAME, PodRuntime

if TYPE_CHECKING:
    from ketch.testing.kube_sim.cluster import Cluster

CLUSTER_DOMAIN = "cluster.local"
POD_HOSTNAME_ENV = "KUBE_SIM_POD_HOSTNAME"
# Put first on the PYTHONPATH of every container process: a Python process then gets its
# pod's hostname from socket.gethostname(), as in a real pod (its own UTS namespace), and the
# sitecustomize it shadows (if any) still runs.
SITECUSTOMIZE = f"""\
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


class ConfigError(Exception):
    """A container's env cannot be resolved (missing Secret/ConfigMap key)."""


def pod_hostname(spec: dict[str, Any], namespace: str, name: str) -> str:
    """The pod's hostname as a kubelet sets it: ``spec.hostname`` or the pod name (at
    most 63 characters), the FQDN with ``setHostnameAsFQDN`` and a ``subdomain``, the
    node's name with ``hostNetwork``."""
    if spec.get("hostNetwork"):
        return NODE_NAME
    host = str(spec.get("hostname") or name)
    if len(host) > 63:
        host = host[:63].rstrip("-.")
    if spec.get("setHostnameAsFQDN") and spec.get("subdomain"):
        return f"{host}.{spec['subdomain']}.{namespace}.svc.{CLUSTER_DOMAIN}"
    return host


def container_env(
    cluster: Cluster, rt: PodRuntime, pod: dict[str, Any], c: dict[str, Any], hostname: str
) -> dict[str, str]:
    """Container ``c``'s environment: the node's (or only PATH), envFrom and env with
    Secret, ConfigMap and field references resolved (:class:`ConfigError` if one is
    missing), the pod's hostname and the container's marker."""
    ns = rt.namespace
    env = (
        dict(os.environ)
        if cluster.inherit_env
        else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    )
    env["HOSTNAME"] = hostname
    for src in c.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, store in (
            ("configMapRef", cluster.config_maps),
            ("secretRef", cluster.secrets),
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
            ("secretKeyRef", cluster.secrets, "secret"),
            ("configMapKeyRef", cluster.config_maps, "configmap"),
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
                "metadata.name": rt.name,
                "metadata.namespace": ns,
                "metadata.uid": rt.uid,
                "spec.nodeName": NODE_NAME,
                "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
                "status.podIP": "127.0.0.1",
                "status.hostIP": "127.0.0.1",
            }
            m = re.match(r"metadata\.(labels|annotations)\['(.+)'\]$", path)
            if m:
                env[name] = (pod["metadata"].get(m.group(1)) or {}).get(m.group(2), "")
            elif path in values:
                env[name] = values[path]
    # socket.gethostname() in a Python process: the pod's hostname (see SITECUSTOMIZE)
    env[POD_HOSTNAME_ENV] = hostname
    env[CONTAINER_ENV] = f"{rt.uid}/{c['name']}"
    site = str(cluster.site_dir)
    env["PYTHONPATH"] = site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def container_command(cluster: Cluster, c: dict[str, Any]) -> list[str]:
    """command + args, the command defaulting to the image's entrypoint ([] to run nothing)."""
    command = list(c.get("command") or cluster.image_entrypoints.get(c["image"], []))
    return [str(x) for x in command + list(c.get("args") or [])] if command else []


def container_workdir(cluster: Cluster, rt: PodRuntime, c: dict[str, Any]) -> str:
    """``workingDir`` if it exists here, else a scratch directory of the pod's."""
    wd = c.get("workingDir")
    if wd and os.path.isdir(wd):
        return str(wd)
    path = cluster.work_dir / rt.namespace / rt.name
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
