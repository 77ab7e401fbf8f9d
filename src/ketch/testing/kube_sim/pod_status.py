"""Pieces of a pod's status as the kubelet writes them: conditions, container states."""

from __future__ import annotations

from typing import Any

from ketch.testing.kube_sim.runtime import now_rfc3339


def set_condition(
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


def container_status(
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


def terminated(
    exit_code: int, reason: str, started: str, message: str | None = None
) -> dict[str, Any]:
    """A container's ``terminated`` state, finished now."""
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
