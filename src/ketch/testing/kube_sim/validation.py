"""A new pod's checks, with the API server's messages (422 Invalid).

So the executor under test meets the same refusals it would meet on a real cluster: names
(RFC 1123), label keys and values, container names, images.
"""

from __future__ import annotations

import re
from typing import Any

from ketch.testing.kube_sim.errors import ApiError

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


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
