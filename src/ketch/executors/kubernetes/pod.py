"""Building the pod of one task try.

Three layers, merged in this order (later wins):

1. the **pod template** (``[kubernetes] pod_template_file``, or the task's
   ``executor_config["pod_template_file"]``): a Pod YAML the team owns. The task runs in
   the container named ``base`` (as in Airflow); a template without one gets it added.
2. **executor defaults**: image (``worker_container_repository:worker_container_tag``) and
   service account when the template sets none, ketch's labels and annotations, the task
   command's args and env (``KETCH_TRY_TOKEN``, ``KETCH_EXECUTION_API_URL``,
   ``KETCH_DAGS_FOLDER``, ``KETCH_LOG_PUMP``: the log pump echoes the try's log to stdout and,
   with ``remote_logging``, ships it to S3), ``restartPolicy: Never``, and with
   ``remote_logging`` a ``terminationGracePeriodSeconds`` of at least
   ``final_flush_timeout`` + :data:`FLUSH_GRACE_MARGIN` (a deleted pod's try flushes its log).
3. the task's **executor_config** (keys below, Kubernetes spelling or snake_case).

Lists of named things (containers, initContainers, env, volumes, volumeMounts, ports)
merge by ``name``: an entry with the same name is merged into the existing one, new
names are appended. Other lists (tolerations, envFrom, args) are appended or replaced
as documented in :data:`EXECUTOR_CONFIG_KEYS`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from pathlib import Path
from typing import Any

import yaml

from ketch.config import KubernetesSettings, Settings
from ketch.executors.base import LaunchRequest, TryKey, map_index_args
from ketch.logs.archive.base import log_key
from ketch.logs.pump.config import CONFIG_ENV as PUMP_CONFIG_ENV
from ketch.logs.pump.config import PumpConfig
from ketch.logs.shipper import ShipperConfig
from ketch.worker.client import ENV_TOKEN, ENV_URL
from ketch.worker.runner import ENV_DAGS_FOLDER
from ketch.worker.task_log import log_path

BASE_CONTAINER = "base"
MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DAG_ID = "ketch.io/dag-id"
LABEL_TASK_ID = "ketch.io/task-id"
LABEL_RUN_ID = "ketch.io/run-id"
LABEL_TRY = "ketch.io/try-number"
LABEL_TI_ID = "ketch.io/ti-id"
LABEL_MAP_INDEX = "ketch.io/map-index"  # only on a mapped instance's pod
SELECTOR = f"{MANAGED_BY}=ketch"
DEADLINE_GRACE_SECONDS = 60
# seconds a SIGTERMed try needs besides its final flush (stop the task's children, report)
FLUSH_GRACE_MARGIN = 15

# executor_config key -> (where it goes, kind). Kinds: "str", "list", "dict", "named" (list
# merged by name).
EXECUTOR_CONFIG_KEYS: dict[str, tuple[str, str]] = {
    "image": ("container.image", "str"),
    "image_pull_policy": ("container.imagePullPolicy", "str"),
    "command": ("container.command", "list"),  # replaces
    "args": ("container.args", "list"),  # replaces (you then run the try yourself)
    "resources": ("container.resources", "dict"),
    "env": ("container.env", "named"),
    "env_from": ("container.envFrom", "list"),  # appended
    "volume_mounts": ("container.volumeMounts", "named"),
    "security_context": ("container.securityContext", "dict"),
    "node_selector": ("spec.nodeSelector", "dict"),
    "tolerations": ("spec.tolerations", "list"),  # appended
    "affinity": ("spec.affinity", "dict"),
    "volumes": ("spec.volumes", "named"),
    "init_containers": ("spec.initContainers", "named"),
    "service_account_name": ("spec.serviceAccountName", "str"),
    "priority_class_name": ("spec.priorityClassName", "str"),
    "active_deadline_seconds": ("spec.activeDeadlineSeconds", "int"),
    "annotations": ("metadata.annotations", "dict"),
    "labels": ("metadata.labels", "dict"),
    "pod_template_file": ("", "str"),
}
_CAMEL = {
    "imagePullPolicy": "image_pull_policy",
    "envFrom": "env_from",
    "volumeMounts": "volume_mounts",
    "securityContext": "security_context",
    "nodeSelector": "node_selector",
    "initContainers": "init_containers",
    "serviceAccountName": "service_account_name",
    "priorityClassName": "priority_class_name",
    "activeDeadlineSeconds": "active_deadline_seconds",
}
_NAMED_LISTS = {"containers", "initContainers", "env", "volumes", "volumeMounts", "ports"}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class PodConfigError(ValueError):
    """An invalid pod template or executor_config; the message names the field."""


# -- names and labels ---------------------------------------------------------------------


def _digest(*parts: object, length: int = 10) -> str:
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:length]


def label_value(value: str) -> str:
    """``value`` as a valid label value (<= 63 chars, [A-Za-z0-9._-], alphanumeric ends); a
    changed value gets a hash suffix so two values never collide."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", value)[:52].strip("._-")
    return f"{cleaned}-{_digest(value, length=10)}".strip("-")


def pod_name(key: TryKey) -> str:
    """Deterministic per try (a 409 on create means it was launched already): a readable
    prefix from the DAG and task ids plus a hash of the whole key; a DNS-1123 label."""
    readable = re.sub(r"[^a-z0-9-]+", "-", f"{key.dag_id}-{key.task_id}".lower()).strip("-")
    readable = readable[:40].rstrip("-") or "task"
    if key.map_index >= 0:  # a mapped instance: its index is part of the name and hash
        readable = readable[:32].rstrip("-") or "task"
        digest = _digest(
            key.dag_id, key.run_id, key.task_id, key.try_number, key.map_index, length=12
        )
        return f"{readable}-{key.map_index}-{key.try_number}-{digest}"[:63]
    digest = _digest(key.dag_id, key.run_id, key.task_id, key.try_number, length=12)
    return f"{readable}-{key.try_number}-{digest}"[:63]


def _map_index(key: TryKey) -> dict[str, str]:
    return {LABEL_MAP_INDEX: str(key.map_index)} if key.map_index >= 0 else {}


def try_labels(key: TryKey, ti_id: int) -> dict[str, str]:
    return {
        MANAGED_BY: "ketch",
        LABEL_DAG_ID: label_value(key.dag_id),
        LABEL_TASK_ID: label_value(key.task_id),
        LABEL_RUN_ID: label_value(key.run_id),
        LABEL_TRY: str(key.try_number),
        LABEL_TI_ID: str(ti_id),
        **_map_index(key),
    }


def try_annotations(key: TryKey) -> dict[str, str]:
    """The full (unsanitised) ids: labels may have been shortened."""
    return {
        LABEL_DAG_ID: key.dag_id,
        LABEL_TASK_ID: key.task_id,
        LABEL_RUN_ID: key.run_id,
        LABEL_TRY: str(key.try_number),
        **_map_index(key),
    }


def key_of(pod: dict[str, Any]) -> TryKey | None:
    """The try a pod runs, from its annotations; None for a pod that is not ketch's."""
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    try:
        return TryKey(
            ann[LABEL_DAG_ID],
            ann[LABEL_RUN_ID],
            ann[LABEL_TASK_ID],
            int(ann[LABEL_TRY]),
            int(ann.get(LABEL_MAP_INDEX, -1)),
        )
    except (KeyError, ValueError):
        return None


def pod_hostname(pod: dict[str, Any]) -> str | None:
    """The hostname a process in this pod gets from ``socket.gethostname()`` (what a try
    records at start), as the kubelet sets it: ``spec.hostname`` or else the pod name, cut to
    63 characters. With ``hostNetwork`` the process sees its node's hostname, taken to be the
    node's name (known once the pod is scheduled). None when it cannot be told from the pod:
    ``setHostnameAsFQDN`` with a ``subdomain`` (the cluster's domain is not in the pod)."""
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        return str(spec["nodeName"]) if spec.get("nodeName") else None
    if spec.get("setHostnameAsFQDN") and spec.get("subdomain"):
        return None
    name = spec.get("hostname") or (pod.get("metadata") or {}).get("name")
    if not name:
        return None
    name = str(name)
    return name[:63].rstrip("-.") if len(name) > 63 else name


def stub_pod(key: TryKey, name: str) -> dict[str, Any]:
    """A pod known only by name and try (gone, or never seen)."""
    return {"metadata": {"name": name, "annotations": try_annotations(key)}}


def resource_version(pod: dict[str, Any]) -> int:
    """The pod's ``resourceVersion`` as a number (0 if unknown): of two copies of one pod
    the executor keeps the newer, whichever order a watch event and a list brought them."""
    try:
        return int((pod.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


# -- merging ------------------------------------------------------------------------------


def merge_named(base: list[Any], override: list[Any], where: str) -> list[Any]:
    """Merge two lists of dicts by ``name``: same name -> deep merge, new name -> appended."""
    out = [copy.deepcopy(x) for x in base]
    index = {x.get("name"): i for i, x in enumerate(out) if isinstance(x, dict)}
    for i, item in enumerate(override):
        if not isinstance(item, dict) or not item.get("name"):
            raise PodConfigError(f"{where}[{i}]: each entry must be a mapping with a name")
        if item["name"] in index:
            out[index[item["name"]]] = deep_merge(out[index[item["name"]]], item, where)
        else:
            index[item["name"]] = len(out)
            out.append(copy.deepcopy(item))
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Mappings merge recursively, named lists merge by name, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        here = f"{where}.{k}" if where else k
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v, here)
        elif k in _NAMED_LISTS and isinstance(v, list) and isinstance(out.get(k), list):
            out[k] = merge_named(out[k], v, here)
        else:
            out[k] = copy.deepcopy(v)
    return out


# -- template and executor_config ---------------------------------------------------------


def load_template(path: str | Path) -> dict[str, Any]:
    """Read and check a pod template file (a Pod YAML)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PodConfigError(f"pod_template_file {path}: cannot read it: {exc}") from exc
    try:
        pod = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PodConfigError(f"pod_template_file {path}: invalid YAML: {exc}") from exc
    return check_template(pod, str(path))


def check_template(pod: Any, where: str = "pod template") -> dict[str, Any]:
    if pod is None:
        pod = {}
    if not isinstance(pod, dict):
        raise PodConfigError(f"{where}: must be a Pod mapping")
    if pod.get("kind", "Pod") != "Pod":
        raise PodConfigError(f"{where}: kind must be Pod, not {pod.get('kind')!r}")
    spec = pod.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise PodConfigError(f"{where}: spec must be a mapping")
    containers = spec.setdefault("containers", [])
    if not isinstance(containers, list) or not all(
        isinstance(c, dict) and c.get("name") for c in containers
    ):
        raise PodConfigError(f"{where}: spec.containers must be a list of named containers")
    if not any(c["name"] == BASE_CONTAINER for c in containers):
        containers.insert(0, {"name": BASE_CONTAINER})
    return pod


def normalise_executor_config(config: Any) -> dict[str, Any]:
    """Validate a task's executor_config (``{"kubernetes": {...}}`` or the keys at top level)
    and return it with snake_case keys. Raises PodConfigError naming the field."""
    if not config:
        return {}
    if not isinstance(config, dict):
        raise PodConfigError("executor_config must be a mapping")
    if isinstance(config.get("kubernetes"), dict):
        config = config["kubernetes"]
    out: dict[str, Any] = {}
    for raw_key, value in config.items():
        key = _CAMEL.get(raw_key, raw_key)
        if key not in EXECUTOR_CONFIG_KEYS:
            known = ", ".join(sorted(EXECUTOR_CONFIG_KEYS))
            raise PodConfigError(f"executor_config.{raw_key}: unknown key (known: {known})")
        kind = EXECUTOR_CONFIG_KEYS[key][1]
        ok = {
            "str": isinstance(value, str) and value != "",
            "int": isinstance(value, int) and not isinstance(value, bool) and value > 0,
            "list": isinstance(value, list),
            "named": isinstance(value, list),
            "dict": isinstance(value, dict),
        }[kind]
        if not ok:
            expected = {"str": "a non-empty string", "int": "a positive integer"}.get(
                kind, f"a {'list' if kind in ('list', 'named') else 'mapping'}"
            )
            raise PodConfigError(f"executor_config.{raw_key}: must be {expected}")
        if kind == "named":
            for i, item in enumerate(value):
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    raise PodConfigError(
                        f"executor_config.{raw_key}[{i}]: must be a mapping with a name"
                    )
        if key in ("command", "args") and not all(isinstance(x, str) for x in value):
            raise PodConfigError(f"executor_config.{raw_key}: must be a list of strings")
        if key in ("annotations", "labels", "node_selector") and not all(
            isinstance(v, str) for v in value.values()
        ):
            raise PodConfigError(f"executor_config.{raw_key}: values must be strings")
        out[key] = value
    if "resources" in out:
        extra = set(out["resources"]) - {"requests", "limits", "claims"}
        if extra:
            raise PodConfigError(f"executor_config.resources.{sorted(extra)[0]}: unknown key")
    return out


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == BASE_CONTAINER)


def _apply_overrides(pod: dict[str, Any], config: dict[str, Any]) -> None:
    for key, value in config.items():
        target, kind = EXECUTOR_CONFIG_KEYS[key]
        if not target:
            continue
        scope, field = target.split(".")
        obj = (
            _container(pod)
            if scope == "container"
            else pod["spec"]
            if scope == "spec"
            else pod.setdefault("metadata", {})
        )
        where = f"executor_config.{key}"
        if kind == "named":
            obj[field] = merge_named(obj.get(field) or [], value, where)
        elif kind == "dict" and isinstance(obj.get(field), dict):
            obj[field] = deep_merge(obj[field], value, where)
        elif key in ("env_from", "tolerations"):
            obj[field] = [*(obj.get(field) or []), *copy.deepcopy(value)]
        else:
            obj[field] = copy.deepcopy(value)


class PodBuilder:
    """Builds try pods; caches templates by path (re-read when the file changes)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kube: KubernetesSettings = settings.kubernetes
        self._templates: dict[str, tuple[float, dict[str, Any]]] = {}

    def template(self, path: str | Path | None) -> dict[str, Any]:
        if path is None:
            return check_template({"apiVersion": "v1", "kind": "Pod"})
        path = str(path)
        try:
            mtime = Path(path).stat().st_mtime
        except OSError as exc:
            raise PodConfigError(f"pod_template_file {path}: cannot read it: {exc}") from exc
        cached = self._templates.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, load_template(path))
            self._templates[path] = cached
        return copy.deepcopy(cached[1])

    def build(self, request: LaunchRequest) -> dict[str, Any]:
        return build_pod(self.settings, request, self)


def build_pod(
    settings: Settings, request: LaunchRequest, builder: PodBuilder | None = None
) -> dict[str, Any]:
    """The full Pod manifest (a dict) for one try. Raises PodConfigError."""
    kube = settings.kubernetes
    builder = builder or PodBuilder(settings)
    config = normalise_executor_config(request.executor_config)
    pod = builder.template(config.get("pod_template_file") or kube.pod_template_file)
    key = request.key
    pod["apiVersion"], pod["kind"] = "v1", "Pod"
    meta = pod.setdefault("metadata", {}) or {}
    pod["metadata"] = meta
    meta.pop("generateName", None)
    meta["name"] = pod_name(key)
    meta["namespace"] = kube.namespace
    meta["labels"] = {**(meta.get("labels") or {}), **try_labels(key, request.ti_id)}
    meta["annotations"] = {**(meta.get("annotations") or {}), **try_annotations(key)}
    spec = pod["spec"]
    spec["restartPolicy"] = "Never"
    if kube.worker_service_account_name and not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = kube.worker_service_account_name
    base = _container(pod)
    if not base.get("image"):
        base["image"] = f"{kube.worker_container_repository}:{kube.worker_container_tag}"
    base["args"] = [
        "task",
        "run",
        key.dag_id,
        key.task_id,
        key.run_id,
        "--try",
        str(key.try_number),
        *map_index_args(key),
        "--log-file",
        str(log_path(settings.log_folder, key)),
    ]
    _apply_overrides(pod, config)
    if request.execution_timeout and not spec.get("activeDeadlineSeconds"):
        # backstop only (the try enforces its own timeout): counted from the pod's start,
        # so it leaves room for scheduling, image pull and init containers
        spec["activeDeadlineSeconds"] = int(
            request.execution_timeout + kube.worker_pods_pending_timeout + DEADLINE_GRACE_SECONDS
        )
    # ketch's own labels and env always win over overrides: they identify and authorise the try
    meta["labels"].update(try_labels(key, request.ti_id))
    meta["annotations"].update(try_annotations(key))
    dags_folder = kube.dags_folder_in_pod or (
        str(settings.core.dags_folder) if settings.core.dags_folder else None
    )
    ketch_env = [
        {"name": ENV_TOKEN, "value": request.token},
        {
            "name": ENV_URL,
            "value": (kube.execution_api_server_url_for_pods or settings.execution_api_url).rstrip(
                "/"
            ),
        },
    ]
    if dags_folder:
        ketch_env.append({"name": ENV_DAGS_FOLDER, "value": dags_folder})
    ketch_env.append({"name": PUMP_CONFIG_ENV, "value": pump_config(settings, key).to_env()})
    base["env"] = merge_named(base.get("env") or [], ketch_env, "env")
    if settings.logging.remote_logging:
        # a deleted pod (cancel, eviction) gets SIGTERM, then SIGKILL after this grace:
        # leave the try time for its final flush
        needed = math.ceil(settings.logging.final_flush_timeout) + FLUSH_GRACE_MARGIN
        grace = spec.get("terminationGracePeriodSeconds")
        if not isinstance(grace, int) or grace < needed:
            spec["terminationGracePeriodSeconds"] = needed
    return pod


def pump_config(settings: Settings, key: TryKey) -> PumpConfig:
    """What the try's log pump does in a pod: echo the log to stdout (plain or JSON
    lines) and, with ``remote_logging``, ship it to the S3 archive in chunks."""
    logs = settings.logging
    ship = None
    if logs.remote_logging and logs.remote_base_log_folder:
        ship = ShipperConfig(
            key=log_key(key),
            remote_base_log_folder=logs.remote_base_log_folder,
            interval=logs.chunk_interval_seconds,
            size_bytes=logs.chunk_size_kib * 1024,
            final_flush_timeout=logs.final_flush_timeout,
            endpoint_url=logs.s3_endpoint_url,
            region=logs.s3_region,
            encrypt=logs.encrypt_s3_logs,
            kms_key_id=logs.s3_kms_key_id,
            conn_id=logs.remote_log_conn_id,
        ).to_json()
    return PumpConfig(
        echo_stdout=True,
        json_format=logs.json_format,
        ship=ship,
        coalesce=logs.coalesce_print_bursts,
    )
